"""AttentionProbe against full attention weights computed the slow way, per block type."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import tiny_open_clip, tiny_timm_eva, tiny_timm_vit
from maskkit import AttentionProbe

TOL = dict(atol=1e-5, rtol=1e-5)


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter non-trivial values (zero biases and unit norms hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))


def _cls_rows(maps: list[torch.Tensor], layers: list[int], prefix: int) -> torch.Tensor:
    """Average the CLS row of full (B, H, L, L) maps over heads and chosen layers, dropping prefix columns."""
    rows = [maps[i][:, :, 0, prefix:].mean(dim=1) for i in layers]
    return torch.stack(rows).mean(dim=0)


def _open_clip_mha_maps(tower, images) -> list[torch.Tensor]:
    maps = []

    def hook(block, args, kwargs):
        h = block.ln_1(args[0])
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=False)
        maps.append(weights)

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in tower.transformer.resblocks]
    with torch.no_grad():
        tower(images)
    for handle in handles:
        handle.remove()
    return maps


def _dropout_maps(blocks, images, run, monkeypatch=None) -> list[torch.Tensor]:
    """Full maps from the unfused path: the attention matrix is the input of ``attn.attn_drop``."""
    maps = []
    handles = [b.attn.attn_drop.register_forward_hook(lambda m, a, out: maps.append(out)) for b in blocks]
    with torch.no_grad():
        run(images)
    for handle in handles:
        handle.remove()
    return maps


@pytest.mark.parametrize("layers, chosen", [("all", [0, 1, 2]), ("last", [2]), ([0, -1], [0, 2]), ([1], [1])])
def test_open_clip_mha_matches_full_weights(layers, chosen):
    tower = tiny_open_clip(layers=3).visual.eval()
    _randomise(tower)
    images = _images()
    probe = AttentionProbe(tower, layers=layers)
    with probe.capture():
        with torch.no_grad():
            tower(images)
    expected = _cls_rows(_open_clip_mha_maps(tower, images), chosen, prefix=1)
    assert probe.scores().shape == (2, 16)
    torch.testing.assert_close(probe.scores(), expected, **TOL)


def test_open_clip_model_accepted_and_call_form():
    model = tiny_open_clip().eval()
    _randomise(model.visual)
    images = _images()
    expected = _cls_rows(_open_clip_mha_maps(model.visual, images), [0, 1], prefix=1)
    torch.testing.assert_close(AttentionProbe(model)(images), expected, **TOL)


@pytest.mark.parametrize("options", [
    dict(qk_norm=True),
    dict(qk_norm=True, scale_heads=True, scale_attn_inner=True, scale_attn=True),
    dict(scaled_cosine_attn=True),
])
def test_open_clip_custom_attention_matches(options, monkeypatch):
    tower = tiny_open_clip(**options).visual.eval()
    _randomise(tower)
    images = _images()
    blocks = list(tower.transformer.resblocks)
    assert type(blocks[0]).__name__ == "CustomResidualAttentionBlock"

    # open_clip 3.3.0 calls torch.bmm on 4-D tensors in its unfused and scaled-cosine paths, which
    # raises. Batched matmul computes the same product, so patching it lets the slow path run.
    monkeypatch.setattr(torch, "bmm", torch.matmul)
    probe = AttentionProbe(tower)
    with probe.capture():
        with torch.no_grad():
            tower(images)
    for block in blocks:
        block.attn.use_fsdpa = False
    expected = _cls_rows(_dropout_maps(blocks, images, tower), [0, 1], prefix=1)
    torch.testing.assert_close(probe.scores(), expected, **TOL)


def _timm_maps(model, images) -> list[torch.Tensor]:
    from timm.utils import AttentionExtract

    for block in model.blocks:
        block.attn.fused_attn = False
    with torch.no_grad():
        maps = AttentionExtract(model)(images)
    return [maps[f"blocks.{i}.attn.softmax"] for i in range(len(model.blocks))]


@pytest.mark.parametrize("options", [
    dict(),
    dict(qk_norm=True),
    dict(reg_tokens=2),
    dict(reg_tokens=1, no_embed_class=True, qkv_bias=False),
    dict(class_token=True, global_pool="map"),
])
def test_timm_vit_matches_full_weights(options):
    model = tiny_timm_vit(depth=3, **options).eval()
    _randomise(model)
    images = _images()
    probe = AttentionProbe(model, layers="all")
    with probe.capture():
        with torch.no_grad():
            model(images)
    scores = probe.scores()
    expected = _cls_rows(_timm_maps(model, images), [0, 1, 2], prefix=model.num_prefix_tokens)
    assert scores.shape == (2, 16)
    torch.testing.assert_close(scores, expected, **TOL)


@pytest.mark.parametrize("options", [
    dict(),
    dict(qkv_fused=False),
    dict(num_reg_tokens=1, qk_norm=True),
    dict(use_rot_pos_emb=False),
])
def test_timm_eva_matches_full_weights(options):
    model = tiny_timm_eva(**options).eval()
    _randomise(model)
    images = _images()
    scores = AttentionProbe(model, layers="all")(images)
    expected = _cls_rows(_timm_maps(model, images), [0, 1], prefix=model.num_prefix_tokens)
    torch.testing.assert_close(scores, expected, **TOL)


@pytest.mark.parametrize("model_fn", [tiny_timm_vit, tiny_timm_eva])
def test_map_pool_without_cls(model_fn):
    from timm.utils import AttentionExtract

    model = model_fn(class_token=False, global_pool="map").eval()
    _randomise(model)
    images = _images()
    scores = AttentionProbe(model)(images)

    model.attn_pool.fused_attn = False
    with torch.no_grad():
        full = AttentionExtract(model, names=["attn_pool.softmax"])(images)["attn_pool.softmax"]
    assert scores.shape == (2, 16)
    torch.testing.assert_close(scores, full.mean(dim=(1, 2)), **TOL)


def test_avg_pool_without_cls_rejected():
    model = tiny_timm_vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no CLS token"):
        AttentionProbe(model)


def test_unsupported_block_rejected():
    from timm.models.vision_transformer import ResPostBlock

    model = tiny_timm_vit(block_fn=ResPostBlock)
    with pytest.raises(TypeError, match="ResPostBlock"):
        AttentionProbe(model)


@pytest.mark.parametrize("layers", [[5], [], "first", [0.5]])
def test_invalid_layers_rejected(layers):
    with pytest.raises(ValueError, match="layer"):
        AttentionProbe(tiny_timm_vit(), layers=layers)


def test_scores_before_capture_raise():
    with pytest.raises(RuntimeError, match="probe.capture"):
        AttentionProbe(tiny_timm_vit()).scores()


def test_hooks_removed_after_capture():
    model = tiny_timm_vit()
    probe = AttentionProbe(model)
    with probe.capture():
        assert all(len(block._forward_pre_hooks) == 1 for block in model.blocks)
    assert all(len(block._forward_pre_hooks) == 0 for block in model.blocks)


def test_gradient_checkpointing_keeps_working():
    tower = tiny_open_clip().visual
    _randomise(tower)
    images = _images()
    expected = AttentionProbe(tower)(images)
    tower.set_grad_checkpointing(True)
    probe = AttentionProbe(tower)
    with probe.capture():
        tower(images).sum().backward()
    torch.testing.assert_close(probe.scores(), expected, **TOL)


@given(batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_scores_are_subprobabilities(batch, seed):
    model = tiny_timm_vit().eval()
    scores = AttentionProbe(model)(_images(batch, seed=seed))
    assert scores.shape == (batch, 16)
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all()
    # The CLS column is dropped without renormalising, so each row sums to less than 1.
    assert (scores.sum(dim=1) < 1).all()
