"""The composed training step on tiny real open_clip models."""

from __future__ import annotations

import io
import math

import pytest
import torch

from conftest import tiny_open_clip
from maskkit.method import build_method, score_entropy
from maskkit.presets import list_presets

BATCH = 4
TOTAL_STEPS = 10


def _batch(seed: int = 0, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(BATCH, 3, size, size, generator=generator)
    texts = torch.randint(1, 49407, (BATCH, 16), generator=generator)
    texts[:, -1] = 49407  # end-of-text token, which open_clip pools on
    return images, texts


def _method(preset="aclip", seed=0, model_seed=0, **overrides):
    torch.manual_seed(model_seed)
    model = tiny_open_clip()
    method = build_method(preset, model, total_steps=TOTAL_STEPS, seed=seed, head_norm="layer",
                          head_hidden_dim=32, head_out_dim=16, **overrides)
    return method.train()


def _losses(result):
    return {key: value for key, value in result.items() if key.startswith("loss_")}


@pytest.mark.parametrize("preset", list_presets())
def test_forward_returns_weighted_losses(preset):
    method = _method(preset)
    result = method(*_batch())
    losses = _losses(result)
    assert losses, result.keys()
    for key, value in result.items():
        assert torch.isfinite(value).all(), key
        if not key.startswith("loss_"):
            assert "loss" not in key, key
            assert not value.requires_grad, key
    total = sum(losses.values())
    total.backward()
    assert method.model.logit_scale.grad is not None


def test_aclip_terms_and_statistics():
    result = _method("aclip")(*_batch())
    assert {"loss_clip", "loss_simclr", "loss_byol"} <= set(result)
    # 4x4 grid in 2x2 blocks: 4 units, half kept -> 2 blocks = 8 patches per view.
    assert result["tokens_view1"].item() == 8
    assert result["tokens_view2"].item() == 8
    assert "tokens_teacher" not in result
    assert 0.0 < result["teacher_entropy"].item() <= 1.0 + 1e-6
    assert result["ema_decay"].item() == pytest.approx(0.996)


def test_clip_keeps_all_tokens():
    result = _method("clip")(*_batch())
    assert result["tokens_view1"].item() == 16
    assert "ema_decay" not in result
    assert set(_losses(result)) == {"loss_clip"}


def test_slip_views_unmasked():
    result = _method("slip")(*_batch())
    assert {result[f"tokens_{name}"].item() for name in ("clip", "simclr1", "simclr2")} == {16}
    assert {"loss_clip", "loss_simclr"} == set(_losses(result))


def test_same_seed_same_losses():
    first = _method("aclip", seed=3)(*_batch())
    second = _method("aclip", seed=3)(*_batch())
    for key in _losses(first):
        assert torch.equal(first[key], second[key]), key


def test_seed_argument_replays_views():
    method = _method("flip")
    images, texts = _batch()
    first = method(images, texts, seed=11)
    keep_first = method.selector.keep_idx.clone()
    method(images, texts, seed=12)
    keep_other = method.selector.keep_idx.clone()
    again = method(images, texts, seed=11)
    assert torch.equal(method.selector.keep_idx, keep_first)
    assert not torch.equal(keep_other, keep_first)
    assert torch.equal(first["loss_clip"], again["loss_clip"])


def test_generator_state_replays_next_forward():
    method = _method("aclip")
    images, texts = _batch()
    with method.generator_state():
        first = method(images, texts)
    second = method(images, texts)
    assert torch.equal(first["loss_clip"], second["loss_clip"])
    third = method(images, texts)
    assert not torch.equal(first["loss_clip"], third["loss_clip"])


def test_host_state_dict_stays_plain():
    torch.manual_seed(0)
    plain_keys = set(tiny_open_clip().state_dict())
    method = _method("aclip")
    assert set(method.model.state_dict()) == plain_keys


def test_teacher_copied_before_attach():
    from maskkit.tokens import TokenSelector

    method = _method("aclip")
    assert isinstance(method.model.visual.patch_dropout, TokenSelector)
    assert not any(isinstance(module, TokenSelector) for module in method.teacher.modules())


def test_teacher_gets_no_gradient():
    method = _method("aclip")
    total = sum(_losses(method(*_batch())).values())
    total.backward()
    assert all(parameter.grad is None for parameter in method.teacher.parameters())
    assert method.model.visual.transformer.resblocks[0].attn.in_proj_weight.grad is not None


def test_update_teacher_follows_student():
    method = _method("aclip")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    student = method.model.visual.transformer.resblocks[0].mlp.c_fc.weight
    teacher_param = dict(method.teacher.named_parameters())
    name = next(key for key in teacher_param if key.endswith("resblocks.0.mlp.c_fc.weight"))
    before = teacher_param[name].detach().clone()
    sum(_losses(method(*_batch())).values()).backward()
    optimizer.step()
    method.update_teacher(0)
    after = teacher_param[name].detach()
    assert not torch.equal(before, after)
    decay = 0.996
    assert torch.allclose(after, decay * before + (1 - decay) * student.detach(), atol=1e-6)
    assert method.step == 1
    assert method(*_batch())["ema_decay"].item() > 0.996


def test_freeze_patch_embed():
    assert not _method("aclip").model.visual.conv1.weight.requires_grad
    assert _method("clip").model.visual.conv1.weight.requires_grad
    assert _method("aclip", freeze_patch_embed=False).model.visual.conv1.weight.requires_grad


def test_extra_state_round_trip():
    source = _method("aclip", model_seed=1)
    target = _method("aclip", model_seed=2)
    target.model.load_state_dict(source.model.state_dict())
    source.update_teacher(0)
    buffer = io.BytesIO()
    torch.save({"state_dict": source.model.state_dict(), "maskkit": source.extra_state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    target.load_extra_state_dict(checkpoint["maskkit"])
    assert target.step == 1
    images, texts = _batch()
    first, second = source(images, texts, seed=5), target(images, texts, seed=5)
    for key in _losses(first):
        assert torch.allclose(first[key], second[key]), key


def test_teacher_warmup_uses_random_selection():
    # A whole-image single view makes the teacher scores, and so attentive masks, seed-independent.
    method = _method("attentive", views={"type": "single", "crop": False}, teacher_warmup_steps=2)
    images, texts = _batch()
    masks = []
    for seed in (1, 2):
        method(images, texts, seed=seed)
        masks.append(method.selector.keep_idx.clone())
    assert not torch.equal(masks[0], masks[1])
    method.update_teacher(1)  # warm-up over at step 2
    attentive = []
    for seed in (1, 2):
        method(images, texts, seed=seed)
        attentive.append(method.selector.keep_idx.clone())
    assert torch.equal(attentive[0], attentive[1])


def test_learned_scorer_distils_from_teacher():
    method = _method("aclip", scorer="learned")
    result = method(*_batch())
    auxiliary = set(_losses(result)) - {"loss_clip", "loss_simclr", "loss_byol"}
    assert auxiliary, result.keys()
    sum(_losses(result).values()).backward()
    grads = [p.grad for p in method.scorer.parameters()]
    assert grads and all(g is not None for g in grads)


def test_learned_scorer_without_teacher_trains_through_gate():
    method = _method("flip", scorer="learned")
    assert method.teacher is None
    result = method(*_batch())
    sum(_losses(result).values()).backward()
    grads = [p.grad for p in method.scorer.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_detach_restores_slot():
    from maskkit.tokens import TokenSelector

    method = _method("flip")
    method.detach()
    assert not isinstance(method.model.visual.patch_dropout, TokenSelector)


def test_eval_encode_matches_plain_model():
    method = _method("aclip").eval()
    images, _ = _batch()
    torch.manual_seed(0)
    plain = tiny_open_clip().eval()
    plain.load_state_dict(method.model.state_dict())
    assert torch.allclose(method.encode_image(images), plain.encode_image(images), atol=1e-6)


def test_bf16_precision_runs():
    result = _method("aclip", precision="bf16")(*_batch())
    assert all(torch.isfinite(value).all() for value in _losses(result).values())
    assert result["loss_clip"].dtype == torch.float32


def test_logit_scale_clamped_at_100():
    method = _method("clip")
    with torch.no_grad():
        method.model.logit_scale.fill_(10.0)
    assert method(*_batch())["logit_scale"].item() == pytest.approx(100.0)


def test_invalid_options_rejected():
    with pytest.raises(TypeError, match="keep_rato"):
        _method("aclip", keep_rato=0.3)
    with pytest.raises(ValueError, match="precision"):
        _method("aclip", precision="fp8")
    with pytest.raises(ValueError, match="total_steps"):
        build_method("aclip", tiny_open_clip())


def test_objective_override_merges_and_drops():
    method = _method("aclip", objectives={"byol": None, "simclr": {"weight": 0.25}})
    assert set(method.objectives) == {"clip", "simclr"}
    assert method.objectives["simclr"].weight == 0.25


def test_keep_ratio_override():
    result = _method("aclip", keep_ratio=0.25)(*_batch())
    assert result["tokens_view1"].item() == 4  # one 2x2 block of four


def test_flops_of_built_method():
    from maskkit.flops import estimate_flops

    method = _method("aclip")
    counted = estimate_flops(method, None)
    assert [item["name"] for item in counted["passes"]] == ["teacher", "view1", "view2"]
    assert counted["passes"][1]["tokens"] == 1 + 8


def test_score_entropy_bounds():
    uniform = torch.ones(2, 16)
    peaked = torch.zeros(2, 16)
    peaked[:, 3] = 1.0
    assert score_entropy(uniform).item() == pytest.approx(1.0)
    assert score_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(score_entropy(torch.zeros(2, 16)).item())


def test_eval_keep_ratio_masks_by_teacher():
    method = _method("aclip", eval_keep_ratio=0.5).eval()
    images, _ = _batch()
    masked = method.encode_image(images)
    assert method.selector.keep_idx.shape == (BATCH, 8)
    method.selector.eval_keep_ratio = None
    full = method.encode_image(images)
    assert method.selector.keep_idx is None
    assert masked.shape == full.shape
    assert not torch.allclose(masked, full)


def test_auto_start_decay_scales_to_run():
    method = _method("aclip", start_decay="auto")
    # A 10-step run gets the helper's floor (0.9), far below A-CLIP's 0.996.
    assert method.teacher.start_decay == pytest.approx(0.9)
    assert method.teacher.end_decay == 1.0


def test_flops_use_built_head_dims():
    from maskkit.flops import estimate_flops

    heads = estimate_flops(_method("aclip"), None)["heads"]["total"]
    default_heads = estimate_flops("aclip", tiny_open_clip())["heads"]["total"]
    assert 0 < heads < default_heads / 100


def test_unknown_preset_key_rejected():
    with pytest.raises(ValueError, match="keep_rato"):
        build_method({"base": "clip", "keep_rato": 0.5}, tiny_open_clip())


@pytest.mark.parametrize("preset", ["clip", "flip", "aclip"])
def test_select_patches_on_whole_images(preset):
    model = tiny_open_clip()
    method = build_method(preset, model, total_steps=10)
    images = torch.randn(3, 3, 32, 32)
    keep_idx, grid = method.select_patches(images)
    assert grid == (4, 4)
    # clip keeps all 16 patches; flip keeps 8 of 16; aclip keeps 2 of 4 2x2 blocks.
    expected = 16 if preset == "clip" else 8
    assert keep_idx.shape == (3, expected)
    assert method.model.training, "select_patches must restore the training mode"
    assert method.selector is None or method.selector.eval_keep_ratio is None
