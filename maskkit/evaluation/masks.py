"""How much of the object a patch selection keeps: object patches from boxes, and the kept share."""

from __future__ import annotations

import math

import torch


def object_patch_mask(boxes: torch.Tensor, grid: tuple[int, int], min_overlap: float = 0.5) -> torch.Tensor:
    """Mark the patches that belong to each object box.

    Rule: a patch is an object patch when the box covers at least ``min_overlap`` (default half)
    of the patch's area. A box narrower than half a patch in one direction can thus have no
    object patch at all.

    Args:
        boxes: (B, 4) float ``xyxy`` in normalised image coordinates [0, 1].
        grid: (h, w) patches; patches are numbered row-major, N = h * w.
        min_overlap: share of a patch's area the box must cover, in (0, 1].

    Returns:
        (B, N) bool, True for object patches.
    """
    height, width = _check_grid(grid)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    boxes = boxes.float()
    edges_x = torch.arange(width + 1, device=boxes.device, dtype=torch.float32) / width
    edges_y = torch.arange(height + 1, device=boxes.device, dtype=torch.float32) / height
    # Overlap of the box with each patch column / row, as a share of the patch side.
    cover_x = (torch.minimum(boxes[:, 2:3], edges_x[1:]) - torch.maximum(boxes[:, 0:1], edges_x[:-1])).clamp(min=0) * width
    cover_y = (torch.minimum(boxes[:, 3:4], edges_y[1:]) - torch.maximum(boxes[:, 1:2], edges_y[:-1])).clamp(min=0) * height
    cover = cover_y[:, :, None] * cover_x[:, None, :]  # (B, h, w) share of each patch's area
    return (cover >= min_overlap - 1e-6).flatten(1)


def object_patch_kept(keep_idx: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int],
                      image_size: int | tuple[int, int] | None = None, min_overlap: float = 0.5) -> float:
    """Share of object patches that a selection kept, averaged over the samples that have object patches.

    Args:
        keep_idx: (B, K) long patch-relative indices of the kept patches.
        boxes: (B, 4) ``xyxy`` object boxes, normalised to [0, 1], or in pixels when ``image_size``
            (an int or (H, W)) is given.
        grid: (h, w) patches.
        min_overlap: the object-patch rule of :func:`object_patch_mask`.

    Returns:
        A float in [0, 1]; NaN when no sample has an object patch.
    """
    height, width = _check_grid(grid)
    if keep_idx.ndim != 2 or keep_idx.shape[0] != boxes.shape[0]:
        raise ValueError(f"keep_idx must have shape (B={boxes.shape[0]}, K), got {tuple(keep_idx.shape)}")
    if keep_idx.numel() and (keep_idx.min() < 0 or keep_idx.max() >= height * width):
        raise ValueError(f"keep_idx values must be in [0, {height * width})")
    boxes = boxes.float()
    if image_size is not None:
        size_h, size_w = (image_size, image_size) if isinstance(image_size, int) else image_size
        boxes = boxes / torch.tensor([size_w, size_h, size_w, size_h], dtype=boxes.dtype, device=boxes.device)
    objects = object_patch_mask(boxes, grid, min_overlap)
    kept = torch.zeros_like(objects).scatter_(1, keep_idx.to(objects.device).long(), True)
    object_count = objects.sum(dim=1)
    has_object = object_count > 0
    if not bool(has_object.any()):
        return math.nan
    share = (objects & kept).sum(dim=1)[has_object].float() / object_count[has_object].float()
    return share.mean().item()


def _check_grid(grid) -> tuple[int, int]:
    if len(grid) != 2 or any(not isinstance(side, int) or side < 1 for side in grid):
        raise ValueError(f"grid must be (h, w) positive ints, got {grid!r}")
    return int(grid[0]), int(grid[1])
