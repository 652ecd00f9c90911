"""Duck-typed access to the vision towers maskkit hosts.

Three tower families are recognised by their attributes, so this module imports
neither open_clip nor timm:

* open_clip ``VisionTransformer`` (``conv1``, ``class_embedding``,
  ``positional_embedding``, ``transformer.resblocks``, ``ln_post``, ``proj``);
* open_clip ``TimmModel`` (a timm ``trunk`` followed by a ``head`` adapter);
* timm ``VisionTransformer`` and ``Eva`` (``patch_embed``, ``blocks``,
  ``num_prefix_tokens``, ``head``).

:func:`forward_pooled` runs the tower's own forward, so a selector attached to
it takes part, and also returns the pooled feature before the image
projection. When the images are not the size the tower was built for, the
absolute position embedding is resampled on the fly (bicubic) and passed in
through :func:`torch.func.functional_call`. The stored parameters keep their
shape, so an EMA copy of the tower still matches its student.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "find_vision_tower",
    "tower_kind",
    "tower_grid",
    "tower_patch_size",
    "tower_image_size",
    "tower_num_prefix_tokens",
    "tower_blocks",
    "tower_width",
    "resample_pos_embed",
    "call_tower",
    "forward_pooled",
]

OPEN_CLIP_VIT = "open_clip_vit"
OPEN_CLIP_TIMM = "open_clip_timm"
TIMM_VIT = "timm_vit"
TIMM_EVA = "timm_eva"


def find_vision_tower(model: nn.Module) -> nn.Module:
    """Return ``model.visual`` for open_clip CLIP models, else ``model`` itself."""
    visual = getattr(model, "visual", None)
    return visual if isinstance(visual, nn.Module) else model


def tower_kind(tower: nn.Module) -> str:
    """Classify a vision tower as one of the supported families.

    Raises:
        TypeError: the tower matches none of open_clip ``VisionTransformer``,
            open_clip ``TimmModel``, timm ``VisionTransformer`` or timm ``Eva``.
    """
    if hasattr(tower, "conv1") and hasattr(tower, "positional_embedding") and hasattr(tower, "transformer"):
        return OPEN_CLIP_VIT
    if isinstance(getattr(tower, "trunk", None), nn.Module) and hasattr(tower, "head"):
        return OPEN_CLIP_TIMM
    if hasattr(tower, "patch_embed") and hasattr(tower, "blocks") and hasattr(tower, "num_prefix_tokens"):
        return TIMM_EVA if hasattr(tower, "rope") else TIMM_VIT
    raise TypeError(
        f"unsupported vision tower {type(tower).__name__}: expected an open_clip VisionTransformer, "
        "an open_clip TimmModel, or a timm VisionTransformer / Eva (pass model.visual for open_clip models)"
    )


def _timm_part(tower: nn.Module) -> nn.Module:
    """Return the timm ViT inside ``tower``: an open_clip TimmModel's trunk, or the tower itself."""
    trunk = tower.trunk if tower_kind(tower) == OPEN_CLIP_TIMM else tower
    if tower_kind(trunk) not in (TIMM_VIT, TIMM_EVA):
        raise TypeError(f"open_clip TimmModel trunk {type(trunk).__name__} is not a timm VisionTransformer or Eva")
    return trunk


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def tower_patch_size(tower: nn.Module) -> tuple[int, int]:
    """Patch size ``(ph, pw)`` in pixels."""
    if tower_kind(tower) == OPEN_CLIP_VIT:
        return _pair(tower.patch_size)
    return _pair(_timm_part(tower).patch_embed.patch_size)


def tower_image_size(tower: nn.Module) -> tuple[int, int]:
    """Input size ``(H, W)`` the tower was built for."""
    if tower_kind(tower) == OPEN_CLIP_VIT:
        return _pair(tower.image_size)
    timm_tower = _timm_part(tower)
    grid = timm_tower.patch_embed.grid_size
    patch = tower_patch_size(tower)
    return (grid[0] * patch[0], grid[1] * patch[1])


def tower_grid(tower: nn.Module, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """Patch grid ``(h, w)`` for ``image_size`` (default: the size the tower was built for).

    Raises:
        ValueError: ``image_size`` is not a multiple of the patch size.
    """
    patch = tower_patch_size(tower)
    if image_size is None:
        size = tower_image_size(tower)
    else:
        size = _pair(image_size)
    if size[0] % patch[0] or size[1] % patch[1] or min(size) <= 0:
        raise ValueError(f"image_size {size} must be a positive multiple of the patch size {patch}")
    return (size[0] // patch[0], size[1] // patch[1])


def tower_num_prefix_tokens(tower: nn.Module) -> int:
    """Tokens before the patches: 1 (CLS) for open_clip towers, timm's ``num_prefix_tokens`` otherwise."""
    if tower_kind(tower) == OPEN_CLIP_VIT:
        return 1
    return int(_timm_part(tower).num_prefix_tokens)


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """Transformer blocks of the tower, in forward order."""
    if tower_kind(tower) == OPEN_CLIP_VIT:
        return list(tower.transformer.resblocks)
    return list(_timm_part(tower).blocks)


def tower_width(tower: nn.Module) -> int:
    """Width of the pooled feature that enters the image projection."""
    kind = tower_kind(tower)
    if kind == OPEN_CLIP_VIT:
        if tower.proj is not None:
            return int(tower.proj.shape[0])
        return int(tower.ln_post.normalized_shape[0])
    if kind == OPEN_CLIP_TIMM and len(list(tower.head.children())) > 0:
        return int(tower.trunk.num_features)
    timm_tower = _timm_part(tower)
    return int(getattr(timm_tower, "head_hidden_size", timm_tower.num_features))


def resample_pos_embed(pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                       num_prefix_tokens: int) -> torch.Tensor:
    """Resample an absolute position embedding from one patch grid to another.

    The first ``num_prefix_tokens`` rows (CLS, registers) are kept as they are;
    the patch rows are reshaped to ``src_grid``, resized bicubically
    (``align_corners=False``, antialiased when shrinking) and flattened again.
    The result is differentiable with respect to ``pos_embed``.

    Args:
        pos_embed: (P + h*w, C) as in open_clip, or (1, P + h*w, C) as in timm.
        src_grid: ``(h, w)`` grid of ``pos_embed``.
        dst_grid: ``(h', w')`` target grid.
        num_prefix_tokens: P, rows that carry no patch position.

    Returns:
        Tensor shaped like ``pos_embed`` with P + h'*w' rows, same dtype.
    """
    squeeze = pos_embed.dim() == 2
    table = pos_embed.unsqueeze(0) if squeeze else pos_embed
    expected = num_prefix_tokens + src_grid[0] * src_grid[1]
    if table.dim() != 3 or table.shape[0] != 1 or table.shape[1] != expected:
        raise ValueError(
            f"pos_embed of shape {tuple(pos_embed.shape)} does not hold {num_prefix_tokens} prefix rows "
            f"plus a {src_grid} grid ({expected} rows)"
        )
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    prefix, patches = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    width = table.shape[-1]
    grid_map = patches.reshape(1, src_grid[0], src_grid[1], width).permute(0, 3, 1, 2).float()
    resized = F.interpolate(grid_map, size=tuple(dst_grid), mode="bicubic", align_corners=False, antialias=True)
    resized = resized.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], width).to(table.dtype)
    out = torch.cat([prefix, resized], dim=1)
    return out[0] if squeeze else out


@contextlib.contextmanager
def _lenient_patch_embed(timm_tower: nn.Module) -> Iterator[None]:
    """Let timm's PatchEmbed accept any multiple of the patch size for the duration."""
    patch_embed = timm_tower.patch_embed
    strict = getattr(patch_embed, "strict_img_size", False)
    patch_embed.strict_img_size = False
    try:
        yield
    finally:
        patch_embed.strict_img_size = strict


def call_tower(tower: nn.Module, images: torch.Tensor):
    """Run ``tower(images)``, resampling the position embedding if the size differs from the built one.

    Supported at other sizes: open_clip ``VisionTransformer``, timm
    ``VisionTransformer`` (also as an open_clip ``TimmModel`` trunk), and any
    timm tower built with ``dynamic_img_size=True``.

    Raises:
        ValueError: the images are not the built size and the tower cannot be
            run at another size (for example a timm Eva whose rotary embedding
            is fixed to the built grid).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if size == tower_image_size(tower):
        return tower(images)

    kind = tower_kind(tower)
    dst_grid = tower_grid(tower, size)
    if kind == OPEN_CLIP_VIT:
        overrides = {
            "positional_embedding": resample_pos_embed(tower.positional_embedding, tower_grid(tower), dst_grid, 1)
        }
        return torch.func.functional_call(tower, overrides, (images,), strict=False)

    timm_tower = _timm_part(tower)
    if getattr(timm_tower, "dynamic_img_size", False):
        return tower(images)
    if tower_kind(timm_tower) == TIMM_EVA and timm_tower.rope is not None:
        raise ValueError(
            f"cannot run timm Eva built for {tower_image_size(tower)} at {size}: its rotary embedding is fixed "
            "to the built grid; build it with dynamic_img_size=True or feed images of the built size"
        )
    if timm_tower.pos_embed is None:
        overrides = {}
    else:
        prefix = 0 if getattr(timm_tower, "no_embed_class", False) else int(timm_tower.num_prefix_tokens)
        resized = resample_pos_embed(timm_tower.pos_embed, tower_grid(tower), dst_grid, prefix)
        name = "trunk.pos_embed" if timm_tower is not tower else "pos_embed"
        overrides = {name: resized}
    with _lenient_patch_embed(timm_tower):
        return torch.func.functional_call(tower, overrides, (images,), strict=False)


def _pooled_hook_target(tower: nn.Module):
    """Find the module whose input or output carries the pooled pre-projection feature, and how to read it."""
    kind = tower_kind(tower)
    if kind == OPEN_CLIP_VIT:
        if getattr(tower, "attn_pool_contrastive", None) is not None:
            raise ValueError(
                "open_clip VisionTransformer with attentional_pool='parallel'/'cascade' is not supported: "
                "its pooled feature does not pass through ln_post"
            )
        if getattr(tower, "pool_type", "tok") == "none":
            raise ValueError("open_clip VisionTransformer with pool_type='none' has no pooled feature")
        if getattr(tower, "final_ln_after_pool", False) and tower.attn_pool is None:
            return tower.ln_post, "output", lambda out: out
        # ln_post normalises all tokens, and the tower's own pooling picks the pooled row from them.
        return tower.ln_post, "output", lambda out: tower._global_pool(out)[0]
    if kind == OPEN_CLIP_TIMM and len(list(tower.head.children())) > 0:
        return tower.head, "input", lambda out: out
    return _timm_part(tower).head, "input", lambda out: out


def forward_pooled(tower: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tower's own forward and also return its pooled pre-projection feature.

    Args:
        tower: a supported vision tower (see :func:`tower_kind`); a selector
            attached to it is used.
        images: (B, 3, H, W). Sizes other than the built one go through
            :func:`call_tower`'s position-embedding resampling.

    Returns:
        ``(projected, pooled)``: projected (B, D) is what the tower returns
        (open_clip's ``encode_image`` before normalisation); pooled
        (B, :func:`tower_width`) is the feature that enters the projection.
        Both keep their autograd graph.
    """
    module, where, read = _pooled_hook_target(tower)
    captured: list[torch.Tensor] = []

    if where == "input":
        def hook(_module, args):
            captured.append(args[0])
        handle = module.register_forward_pre_hook(hook)
    else:
        def hook(_module, _args, output):
            captured.append(output)
        handle = module.register_forward_hook(hook)

    try:
        projected = call_tower(tower, images)
    finally:
        handle.remove()

    if isinstance(projected, (tuple, list)):  # open_clip output_tokens=True returns (pooled, tokens)
        projected = projected[0]
    if not captured:
        raise RuntimeError(f"the pooled feature of {type(tower).__name__} was not captured during its forward")
    pooled = read(captured[-1])
    if pooled.dim() != 2:
        raise RuntimeError(f"expected a (B, width) pooled feature, got shape {tuple(pooled.shape)}")
    return projected, pooled
