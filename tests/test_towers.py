"""Tower helpers: metadata, pooled features, selector pass-through and other input sizes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import tiny_open_clip, tiny_timm_eva, tiny_timm_vit
from maskkit.towers import (
    call_tower,
    find_vision_tower,
    forward_pooled,
    resample_pos_embed,
    tower_blocks,
    tower_grid,
    tower_image_size,
    tower_kind,
    tower_num_prefix_tokens,
    tower_patch_size,
    tower_width,
)


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def open_clip_timm_tower():
    from open_clip.timm_model import TimmModel

    # open_clip 3.3.0 does not pass image_size to timm, so the trunk keeps its 224 px size.
    return TimmModel("vit_tiny_patch16_224", embed_dim=24, proj="linear").eval()


def test_find_vision_tower():
    model = tiny_open_clip()
    assert find_vision_tower(model) is model.visual
    vit = tiny_timm_vit()
    assert find_vision_tower(vit) is vit


@pytest.mark.parametrize("build, kind, grid, prefix, blocks, width", [
    (lambda: tiny_open_clip(layers=3).visual, "open_clip_vit", (4, 4), 1, 3, 32),
    (lambda: tiny_timm_vit(reg_tokens=2, depth=3), "timm_vit", (4, 4), 3, 3, 32),
    (lambda: tiny_timm_vit(img_size=48, patch_size=8, embed_dim=24, num_heads=3), "timm_vit", (6, 6), 1, 2, 24),
    (lambda: tiny_timm_eva(), "timm_eva", (4, 4), 1, 2, 32),
])
def test_tower_metadata(build, kind, grid, prefix, blocks, width):
    tower = build()
    assert tower_kind(tower) == kind
    assert tower_grid(tower) == grid
    assert tower_num_prefix_tokens(tower) == prefix
    assert len(tower_blocks(tower)) == blocks
    assert tower_width(tower) == width
    assert tower_image_size(tower) == (grid[0] * 8, grid[1] * 8)


def test_open_clip_timm_metadata(open_clip_timm_tower):
    tower = open_clip_timm_tower
    assert tower_kind(tower) == "open_clip_timm"
    assert tower_grid(tower) == (14, 14)
    assert tower_grid(tower, 112) == (7, 7)
    assert tower_patch_size(tower) == (16, 16)
    assert tower_width(tower) == 192
    assert len(tower_blocks(tower)) == 12


def test_unsupported_tower_rejected():
    with pytest.raises(TypeError, match="unsupported vision tower Linear"):
        tower_grid(torch.nn.Linear(2, 2))


def test_grid_rejects_non_multiple():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tower_grid(tiny_timm_vit(), 30)


def test_open_clip_pooled_matches_encode_image():
    model = tiny_open_clip().eval()
    images = _images()
    projected, pooled = forward_pooled(model.visual, images)
    with torch.no_grad():
        expected = model.encode_image(images)
    torch.testing.assert_close(projected, expected)
    torch.testing.assert_close(pooled @ model.visual.proj, projected)
    assert pooled.shape == (2, tower_width(model.visual))


@pytest.mark.parametrize("options", [dict(pool_type="avg"), dict(final_ln_after_pool=True)])
def test_open_clip_pooling_variants(options):
    tower = tiny_open_clip(**options).visual.eval()
    projected, pooled = forward_pooled(tower, _images())
    torch.testing.assert_close(pooled @ tower.proj, projected)


@pytest.mark.parametrize("build", [
    lambda: _with_head(tiny_timm_vit()),
    lambda: _with_head(tiny_timm_eva()),
    lambda: _with_head(tiny_timm_vit(class_token=False, global_pool="map")),
])
def test_timm_pooled_is_pre_logits(build):
    model = build().eval()
    images = _images()
    projected, pooled = forward_pooled(model, images)
    with torch.no_grad():
        features = model.forward_features(images)
        expected_pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(projected, model.head(pooled))
    assert projected.shape == (2, 10)


def _with_head(model):
    model.reset_classifier(10)
    return model


def test_open_clip_timm_pooled(open_clip_timm_tower):
    tower = open_clip_timm_tower
    images = _images(size=224)
    projected, pooled = forward_pooled(tower, images)
    torch.testing.assert_close(tower.head(pooled), projected)
    assert pooled.shape == (2, 192)


def test_pooled_keeps_gradient():
    tower = tiny_open_clip().visual
    projected, pooled = forward_pooled(tower, _images())
    pooled.sum().backward()
    assert tower.conv1.weight.grad is not None


def test_forward_goes_through_attached_selector():
    from maskkit import TokenSelector, attach
    from maskkit.scorers import RandomScorer

    model = tiny_open_clip()
    images = _images()
    model.eval()
    full, _ = forward_pooled(model.visual, images)
    selector = TokenSelector(keep_ratio=0.25, scorer=RandomScorer(torch.Generator().manual_seed(0)))
    handle = attach(model, selector)
    model.train()
    masked, pooled = forward_pooled(model.visual, images)
    assert selector.keep_idx is not None
    assert selector.keep_idx.shape == (2, 4)
    assert not torch.allclose(masked, full)
    handle.remove()


@pytest.mark.parametrize("build, attr", [
    (lambda size: tiny_open_clip(image_size=size).visual, "positional_embedding"),
    (lambda size: tiny_timm_vit(img_size=size, reg_tokens=1), "pos_embed"),
    (lambda size: tiny_timm_vit(img_size=size, reg_tokens=1, no_embed_class=True), "pos_embed"),
])
def test_half_resolution_matches_rebuilt_tower(build, attr):
    tower = build(32).eval()
    small = build(16).eval()
    prefix = 0 if getattr(tower, "no_embed_class", False) else tower_num_prefix_tokens(tower)
    state = dict(tower.state_dict())
    state[attr] = resample_pos_embed(getattr(tower, attr).detach(), (4, 4), (2, 2), prefix)
    small.load_state_dict(state)
    images = _images(size=16)

    shape_before = getattr(tower, attr).shape
    projected, pooled = forward_pooled(tower, images)
    expected_projected, expected_pooled = forward_pooled(small, images)
    torch.testing.assert_close(projected, expected_projected)
    torch.testing.assert_close(pooled, expected_pooled)
    assert getattr(tower, attr).shape == shape_before
    assert tower_grid(tower, 16) == (2, 2)


def test_open_clip_timm_half_resolution(open_clip_timm_tower):
    projected, pooled = forward_pooled(open_clip_timm_tower, _images(size=112))
    assert projected.shape == (2, 24)
    assert pooled.shape == (2, 192)
    assert open_clip_timm_tower.trunk.patch_embed.strict_img_size


def test_eva_other_size_rejected_unless_dynamic():
    with pytest.raises(ValueError, match="rotary embedding"):
        call_tower(tiny_timm_eva(), _images(size=16))
    dynamic = tiny_timm_eva(dynamic_img_size=True)
    assert call_tower(dynamic, _images(size=16)).shape == (2, 32)


@given(src=st.tuples(st.integers(1, 6), st.integers(1, 6)), dst=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       prefix=st.integers(0, 2), value=st.floats(-3, 3))
def test_resample_keeps_prefix_and_constants(src, dst, prefix, value):
    table = torch.full((1, prefix + src[0] * src[1], 4), value)
    table[:, :prefix] = torch.arange(prefix * 4, dtype=torch.float32).view(1, prefix, 4)
    out = resample_pos_embed(table, src, dst, prefix)
    assert out.shape == (1, prefix + dst[0] * dst[1], 4)
    torch.testing.assert_close(out[:, :prefix], table[:, :prefix])
    torch.testing.assert_close(out[:, prefix:], torch.full_like(out[:, prefix:], value), atol=1e-5, rtol=1e-5)


def test_resample_two_dim_and_gradient():
    table = torch.randn(1 + 16, 8, requires_grad=True)
    out = resample_pos_embed(table, (4, 4), (2, 2), 1)
    assert out.shape == (5, 8)
    out.sum().backward()
    assert table.grad is not None
    assert table.grad[1:].abs().sum() > 0


def test_resample_rejects_wrong_rows():
    with pytest.raises(ValueError, match="prefix rows"):
        resample_pos_embed(torch.zeros(10, 4), (3, 3), (2, 2), 0)
