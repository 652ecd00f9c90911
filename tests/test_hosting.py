"""attach(): the selector inside real open_clip and timm models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_open_clip, tiny_timm_eva, tiny_timm_vit
from maskkit.hosting import _find_slot, attach
from maskkit.tokens import TokenSelector

pytestmark = pytest.mark.timeout(300)

IMAGE_SIZE = 32  # 4 x 4 patches of 8 px in every tiny model below
NUM_PATCHES = 16


def open_clip_timm_tower():
    """open_clip CLIP whose image tower is a timm ViT (open_clip TimmModel), cut to 2 blocks."""
    import open_clip

    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False,
                        image_size=IMAGE_SIZE, timm_pool="", timm_proj="linear"),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    trunk = model.visual.trunk
    trunk.set_input_size(img_size=IMAGE_SIZE, patch_size=8)
    trunk.blocks = trunk.blocks[:2]
    return model


MODELS = {
    "open_clip": (tiny_open_clip, 1),
    "open_clip_visual": (lambda: tiny_open_clip().visual, 1),
    "open_clip_timm": (open_clip_timm_tower, 1),
    "timm_vit": (tiny_timm_vit, 1),
    "timm_vit_registers": (lambda: tiny_timm_vit(reg_tokens=4), 5),
    "timm_siglip_avg": (lambda: tiny_timm_vit(class_token=False, global_pool="avg"), 0),
    "timm_siglip_map": (lambda: tiny_timm_vit(class_token=False, global_pool="map"), 0),
    "timm_eva": (tiny_timm_eva, 1),
}


def first_block(host: nn.Module) -> nn.Module:
    if hasattr(host, "transformer"):
        return host.transformer.resblocks[0]
    return host.blocks[0]


def encode(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.encode_image(images) if hasattr(model, "encode_image") else model(images)


def count_first_block_tokens(model, host, images) -> int:
    seen = []
    hook = first_block(host).register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    try:
        encode(model, images)
    finally:
        hook.remove()
    return seen[0]


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_attach_counts_tokens_in_train_and_eval(name):
    factory, num_prefix = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    keys = list(model.state_dict())
    selector = TokenSelector(keep_ratio=0.5, block_size=2, eval_keep_ratio=0.25)
    handle = attach(model, selector)

    assert handle.num_prefix_tokens == num_prefix
    assert handle.grid == (4, 4)
    assert selector.num_prefix_tokens == num_prefix
    assert list(model.state_dict()) == keys

    scores = torch.randn(2, NUM_PATCHES)
    model.train()
    with selector.use_scores(scores):
        assert count_first_block_tokens(model, handle.host, images()) == num_prefix + 8  # 2 of 4 blocks
    assert selector.keep_idx.shape == (2, 8)

    model.eval()
    with selector.use_scores(scores):
        assert count_first_block_tokens(model, handle.host, images()) == num_prefix + 4  # 1 of 4 blocks

    selector.eval_keep_ratio = None
    assert count_first_block_tokens(model, handle.host, images()) == num_prefix + NUM_PATCHES
    assert selector.keep_idx is None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remove_restores_original_slot(name):
    factory, _ = MODELS[name]
    model = factory()
    keys = list(model.state_dict())
    slot = _find_slot(model)
    host = slot.host
    original = getattr(host, slot.name)
    stored_as_module = slot.name in host._modules

    selector = TokenSelector(keep_ratio=0.5)
    handle = attach(model, selector)
    assert handle.host is host
    assert getattr(host, slot.name) is selector
    assert "forward_intermediates" in host.__dict__
    handle.remove()

    assert getattr(host, slot.name) is original
    assert (slot.name in host._modules) == stored_as_module
    assert "forward_intermediates" not in host.__dict__
    assert list(model.state_dict()) == keys
    assert selector.grid is None
    handle.remove()  # a second call does nothing
    attach(model, TokenSelector(keep_ratio=0.5)).remove()  # the slot is free again


def test_remove_restores_eva_none_slot_as_attribute():
    model = tiny_timm_eva()
    assert "patch_drop" in model.__dict__
    assert model.patch_drop is None
    handle = attach(model, TokenSelector(keep_ratio=0.5))
    assert "patch_drop" in model._modules
    handle.remove()
    assert "patch_drop" not in model._modules
    assert model.__dict__["patch_drop"] is None


def test_remove_restores_existing_patch_dropout_module():
    model = tiny_open_clip(patch_dropout=0.5)
    original = model.visual.patch_dropout
    handle = attach(model, TokenSelector(keep_ratio=0.5))
    assert model.visual.patch_dropout is handle.selector
    handle.remove()
    assert model.visual.patch_dropout is original

    eva = tiny_timm_eva(patch_drop_rate=0.25)
    original = eva.patch_drop
    with attach(eva, TokenSelector(keep_ratio=0.5)) as handle:
        assert handle.selector.return_indices
    assert eva.patch_drop is original


def eva_reference(model, images, keep_idx, rope_idx=None):
    """Eva forward on only the kept patches, gathering x and the rotary table by hand.

    ``rope_idx`` (default ``keep_idx``) picks the rotary rows, to show that a wrong
    gather changes the output.
    """
    rope_idx = keep_idx if rope_idx is None else rope_idx
    x = model.patch_embed(images)
    x, rope = model._pos_embed(x)  # no slot: full sequence, rope (N, dim)
    prefix = model.num_prefix_tokens
    kept = x[:, prefix:].gather(1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([x[:, :prefix], kept], dim=1)
    rope = rope[rope_idx].unsqueeze(1)  # (B, 1, K, dim), one table per sample shared by heads
    x = model.norm_pre(x)
    for block in model.blocks:
        x = block(x, rope=rope)
    return model.forward_head(model.norm(x))


def test_eva_masked_forward_matches_gathered_rope_reference():
    torch.manual_seed(0)
    model = tiny_timm_eva()
    with torch.no_grad():  # sharpen attention so that token positions (rope) matter
        for name, parameter in model.named_parameters():
            if name.startswith("blocks.") and ".attn." in name and name.endswith("weight"):
                parameter.mul_(6.0)
    reference_model = copy.deepcopy(model)
    selector = TokenSelector(keep_ratio=0.5)
    attach(model, selector)
    model.train()
    reference_model.train()
    x = images()
    scores = torch.randn(2, NUM_PATCHES)
    with selector.use_scores(scores):
        out = model(x)
    keep_idx = selector.keep_idx
    assert keep_idx.shape == (2, 8)

    expected = eva_reference(reference_model, x, keep_idx)
    assert torch.allclose(out, expected, atol=1e-4)

    # The comparison is sensitive to the rope gather: the first K rope rows give another output.
    wrong_rope = eva_reference(reference_model, x, keep_idx, rope_idx=torch.arange(8).expand(2, 8))
    assert (out - wrong_rope).abs().max() > 1e-2
    # With every patch kept the reference equals the unmasked model.
    all_idx = torch.arange(NUM_PATCHES).expand(2, -1)
    assert torch.allclose(eva_reference(reference_model, x, all_idx), reference_model(x), atol=1e-4)


@pytest.mark.parametrize("name", ["open_clip", "timm_vit", "timm_eva"])
def test_grad_checkpointing_gives_same_loss_and_grads(name):
    factory, _ = MODELS[name]
    torch.manual_seed(0)
    plain = factory().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    scores = torch.randn(2, NUM_PATCHES)
    x = images()

    losses, grads = [], []
    for model in (plain, checkpointed):
        selector = TokenSelector(keep_ratio=0.5, block_size=2)
        attach(model, selector)
        with selector.use_scores(scores):
            loss = encode(model, x).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None})

    assert torch.allclose(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    assert len(grads[0]) > 0
    for key in grads[0]:
        assert torch.allclose(grads[0][key], grads[1][key], atol=1e-6), key


def test_open_clip_forward_intermediates_nchw_rejected_while_active():
    model = tiny_open_clip().train()
    selector = TokenSelector(keep_ratio=0.5)
    handle = attach(model, selector)
    x = images()
    with selector.use_scores(torch.randn(2, NUM_PATCHES)):
        with pytest.raises(ValueError, match="output_fmt='NLC'"):
            model.visual.forward_intermediates(x)
        with pytest.raises(ValueError, match="image_output_fmt='NLC'"):
            model.forward_intermediates(image=x)
        nlc = model.visual.forward_intermediates(x, output_fmt="NLC")
    assert nlc["image_intermediates"][0].shape[1] == 8

    model.eval()
    nchw = model.visual.forward_intermediates(x)
    assert nchw["image_intermediates"][0].shape[-2:] == (4, 4)

    handle.remove()
    model.train()
    nchw = model.visual.forward_intermediates(x)
    assert nchw["image_intermediates"][0].shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", ["timm_vit", "timm_eva", "open_clip_timm"])
def test_timm_forward_intermediates_nchw_rejected_while_active(name):
    factory, num_prefix = MODELS[name]
    model = factory().eval()
    selector = TokenSelector(keep_ratio=0.5, eval_keep_ratio=0.5)
    handle = attach(model, selector)
    trunk = handle.host
    x = images()
    with selector.use_scores(torch.randn(2, NUM_PATCHES)):
        with pytest.raises(ValueError, match="NLC"):
            trunk.forward_intermediates(x)
        with pytest.raises(ValueError, match="NLC"):
            trunk.forward_intermediates(x, None, False, False, False, "NCHW")
        _, intermediates = trunk.forward_intermediates(x, output_fmt="NLC")
    assert intermediates[0].shape[1] == 8


def test_deepcopy_of_attached_model_guards_the_copy():
    model = tiny_timm_vit().train()
    handle = attach(model, TokenSelector(keep_ratio=0.5))
    clone = copy.deepcopy(model)
    guard = clone.__dict__["forward_intermediates"]
    assert guard.host is clone
    assert guard.selector is clone.patch_drop
    assert guard.selector is not handle.selector
    with clone.patch_drop.use_scores(torch.randn(2, NUM_PATCHES)):
        with pytest.raises(ValueError, match="NLC"):
            clone.forward_intermediates(images())


def test_attach_twice_raises():
    model = tiny_open_clip()
    attach(model, TokenSelector(keep_ratio=0.5))
    with pytest.raises(ValueError, match="already contains a TokenSelector"):
        attach(model, TokenSelector(keep_ratio=0.5))


def test_attach_same_selector_to_two_models_raises():
    selector = TokenSelector(keep_ratio=0.5)
    attach(tiny_timm_vit(), selector)
    with pytest.raises(ValueError, match="already attached"):
        attach(tiny_timm_vit(), selector)


def test_attach_without_slot_lists_what_was_searched():
    with pytest.raises(TypeError) as info:
        attach(nn.Sequential(nn.Linear(4, 4)), TokenSelector(keep_ratio=0.5))
    message = str(info.value)
    for fragment in ("Sequential", "visual.patch_dropout", "visual.trunk.patch_drop", "patch_embed.grid_size"):
        assert fragment in message


def test_attach_checks_grid_against_selector():
    with pytest.raises(ValueError, match="block_size=3"):
        attach(tiny_timm_vit(), TokenSelector(keep_ratio=0.5, block_size=3))
    with pytest.raises(ValueError, match=r"keep_count=5 exceeds the 4"):
        attach(tiny_timm_vit(), TokenSelector(keep_count=5, block_size=2))


def test_remove_restores_selector_settings():
    selector = TokenSelector(keep_ratio=0.5, grid=(9, 9), num_prefix_tokens=3)
    handle = attach(tiny_timm_eva(), selector)
    assert (selector.grid, selector.num_prefix_tokens, selector.return_indices) == ((4, 4), 1, True)
    handle.remove()
    assert (selector.grid, selector.num_prefix_tokens, selector.return_indices) == ((9, 9), 3, False)


def test_attach_follows_host_mode():
    model = tiny_open_clip().eval()
    selector = TokenSelector(keep_ratio=0.5).train()
    attach(model, selector)
    assert not selector.training
    model.train()
    assert selector.training


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["open_clip_visual", "timm_vit", "timm_eva"])
def test_attached_model_compiles_without_graph_breaks(name):
    factory, _ = MODELS[name]
    model = factory().train()
    selector = TokenSelector(keep_ratio=0.5, block_size=2)
    attach(model, selector)
    torch._dynamo.reset()
    with selector.use_scores(torch.randn(2, NUM_PATCHES)):
        report = torch._dynamo.explain(model)(images())
    assert report.graph_break_count == 0, report.break_reasons
