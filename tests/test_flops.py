"""FLOP cost model: hand counts on a small configuration and the A-CLIP paper's cost ratios."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import tiny_open_clip
from maskkit.flops import (
    estimate_flops,
    flop_ratio,
    kept_patches,
    plan_passes,
    resolve_model_config,
    solve_keep_ratio,
    transformer_forward_flops,
)
from maskkit.presets import ACLIP_EFF_KEEP_RATIO, list_presets

# Images of 32 px in 8 px patches (a 4x4 grid of 16 patches), one 4-wide layer with MLP ratio 2.
# Text of 3 tokens through one 2-wide layer. Joint dimension 2.
SMALL = {
    "vision": {"image_size": 32, "patch_size": 8, "width": 4, "layers": 1, "mlp_ratio": 2.0},
    "text": {"context_length": 3, "width": 2, "layers": 1, "mlp_ratio": 2.0},
    "embed_dim": 2,
}
PATCH_EMBED = 2 * 16 * (3 * 8 * 8) * 4      # every patch, 192 inputs -> 4 outputs
IMAGE_PROJ = 2 * 4 * 2                      # pooled token 4 -> 2
TEXT_FORWARD = (8 + 4 * 2) * 3 * 2**2 + 4 * 3**2 * 2 + 2 * 2 * 2


def test_transformer_flops_hand_count():
    # n=17 tokens, d=4, m=2: projections 8*n*d^2, MLP 4*m*n*d^2, attention 4*n^2*d.
    assert transformer_forward_flops(17, 4, 1, 2.0) == 8 * 17 * 16 + 8 * 17 * 16 + 4 * 17**2 * 4
    assert transformer_forward_flops(17, 4, 3, 2.0) == 3 * transformer_forward_flops(17, 4, 1, 2.0)


def test_clip_step_hand_count():
    vision_forward = PATCH_EMBED + (16 * 17 * 16 + 4 * 17**2 * 4) + IMAGE_PROJ
    result = estimate_flops("clip", SMALL, include_heads=False)
    assert [item["name"] for item in result["passes"]] == ["view1"]
    assert result["passes"][0]["tokens"] == 17
    assert result["passes"][0]["forward"] == vision_forward
    assert result["passes"][0]["backward"] == 2 * vision_forward
    assert result["text"]["forward"] == TEXT_FORWARD
    assert result["total"] == 3 * vision_forward + 3 * TEXT_FORWARD
    assert result["forward"] + result["backward"] == result["total"]


def test_flip_step_hand_count():
    # keep 0.5 of 16 patches -> 8 patches + CLS = 9 tokens; the patch embedding still runs on all 16.
    vision_forward = PATCH_EMBED + (16 * 9 * 16 + 4 * 9**2 * 4) + IMAGE_PROJ
    result = estimate_flops("flip", SMALL, include_heads=False)
    assert result["passes"][0]["tokens"] == 9
    assert result["total"] == 3 * vision_forward + 3 * TEXT_FORWARD


def test_aclip_teacher_forward_only():
    result = estimate_flops("aclip", SMALL, include_heads=False)
    names = [item["name"] for item in result["passes"]]
    assert names == ["teacher", "view1", "view2"]
    teacher, view1, _ = result["passes"]
    assert teacher["backward"] == 0
    assert teacher["tokens"] == 17
    # 2x2 blocks on a 4x4 grid: 4 units, keep 2 -> 8 patches.
    assert view1["tokens"] == 9
    assert view1["backward"] == 2 * view1["forward"]


def test_text_counted_once_per_step():
    texts = {name: estimate_flops(name, SMALL)["text"]["total"] for name in list_presets()}
    assert set(texts.values()) == {3 * TEXT_FORWARD}


def test_heads_counted_when_asked():
    with_heads = estimate_flops("aclip", SMALL)
    without = estimate_flops("aclip", SMALL, include_heads=False)
    # SimCLR 4-4096-4096-256 on two views + BYOL projector and predictor on two views
    # (trained) + the teacher's projector (forward only).
    simclr = 2 * (4 * 4096 + 4096 * 4096 + 4096 * 256)
    projector = 2 * (4 * 4096 + 4096 * 256)
    predictor = 2 * (256 * 4096 + 4096 * 256)
    trained = 2 * simclr + 2 * (projector + predictor)
    assert with_heads["heads"]["total"] == 3 * trained + projector
    assert with_heads["total"] - without["total"] == 3 * trained + projector


def test_batch_scales_linearly():
    one, eight = estimate_flops("aclip", SMALL), estimate_flops("aclip", SMALL, batch=8)
    assert eight["total"] == 8 * one["total"]
    assert eight["per_sample"] == one["total"]


def test_attention_term_is_quadratic():
    linear_only = (8 + 4 * 4.0) * 768**2
    ratio = transformer_forward_flops(394, 768, 1) / transformer_forward_flops(197, 768, 1)
    assert ratio > 2.0
    assert transformer_forward_flops(197, 768, 1) > 197 * linear_only


def test_paper_config_ratios():
    aclip, slip = flop_ratio("aclip", "clip", "ViT-B-16"), flop_ratio("slip", "clip", "ViT-B-16")
    assert 1.16 <= aclip <= 1.33, aclip
    assert 2.67 <= slip <= 3.0, slip
    assert flop_ratio("flip", "clip", "ViT-B-16") < 0.6


def test_aclip_eff_keep_ratio_is_solved_value():
    assert solve_keep_ratio("aclip_eff", 0.86, "ViT-B-16") == pytest.approx(ACLIP_EFF_KEEP_RATIO)
    eff = flop_ratio("aclip_eff", "clip", "ViT-B-16")
    assert 0.82 <= eff <= 0.86, eff
    # One more kept block would break the 0.86x budget.
    richer = {"base": "aclip_eff", "keep_ratio": 19 / 49}
    assert flop_ratio(richer, "clip", "ViT-B-16") > 0.86
    # The half-resolution teacher alone does not reach 0.86x.
    half_teacher_only = {"base": "aclip", "teacher_resolution": 0.5}
    assert flop_ratio(half_teacher_only, "clip", "ViT-B-16") > 1.0


def test_half_resolution_teacher_pass():
    teacher = plan_passes("aclip_eff", 224, 16)[0]
    assert teacher["name"] == "teacher"
    assert teacher["image_size"] == 112
    assert teacher["patches"] == 49


def test_model_config_forms_agree():
    model = tiny_open_clip(image_size=32, patch_size=8, width=32, layers=2, embed_dim=32, context_length=16)
    config = resolve_model_config(model)
    assert config["vision"] == {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "mlp_ratio": 2.0}
    assert config["text"]["context_length"] == 16
    assert estimate_flops("aclip", model)["total"] == estimate_flops("aclip", config)["total"]
    named = resolve_model_config("ViT-B-16")
    assert named["vision"]["width"] == 768
    assert named["text"]["layers"] == 12
    assert named["embed_dim"] == 512


@pytest.mark.parametrize("bad, message", [
    ({"vision": {}, "text": {}}, "embed_dim"),
    ({"vision": {"image_size": 32}, "text": SMALL["text"], "embed_dim": 2}, "patch_size"),
    ("no-such-model", "no-such-model"),
])
def test_model_config_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_model_config(bad)


def test_argument_errors():
    with pytest.raises(ValueError, match="batch"):
        estimate_flops("clip", SMALL, batch=0)
    with pytest.raises(ValueError, match="keep_ratio"):
        kept_patches((4, 4), 0.0)
    with pytest.raises(ValueError, match="block_size"):
        kept_patches((5, 5), 0.5, 2)


@given(st.floats(0.05, 1.0), st.floats(0.05, 1.0))
def test_cost_monotone_in_keep_ratio(low, high):
    low, high = sorted((low, high))
    cost = [estimate_flops({"base": "aclip", "keep_ratio": r}, "ViT-B-16")["total"] for r in (low, high)]
    assert cost[0] <= cost[1]


@given(st.integers(1, 16), st.integers(1, 16), st.floats(0.01, 1.0))
def test_kept_patches_rounding_rule(h, w, ratio):
    kept = kept_patches((h, w), ratio)
    assert 1 <= kept <= h * w
    assert kept == (h * w if ratio == 1.0 else max(1, int(h * w * ratio + 0.5)))


@pytest.mark.parametrize("name", ["single", "aclip", "slip"])
def test_builtin_view_table_matches_generators(name):
    import torch

    from maskkit.flops import _view_sizes
    from maskkit.registry import build_view_generator

    views = build_view_generator(name)(torch.zeros(2, 3, 48, 48), torch.Generator().manual_seed(0))
    real = {view_name: int(view.shape[-1]) for view_name, view in zip(views.names, views.views)}
    assert _view_sizes({"type": name}, name, 48) == real
    if name == "aclip":
        assert views.names[views.teacher_index] == "teacher"
