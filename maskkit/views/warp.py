"""Resample a teacher score map from the teacher view's box onto another view's patch grid."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from maskkit.views.boxes import box_sampling_grid

__all__ = ["warp_scores"]


def _check_grid(name: str, grid) -> tuple[int, int]:
    try:
        height, width = (int(item) for item in grid)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (h, w) of positive integers, got {grid!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be a pair (h, w) of positive integers, got {grid!r}")
    return height, width


def _check_boxes(name: str, boxes: torch.Tensor, batch: int) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.shape != (batch, 4):
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a ({batch}, 4) xyxy tensor to match scores, got {shape}")


def warp_scores(scores: torch.Tensor, grid: tuple[int, int], src_box: torch.Tensor, dst_box: torch.Tensor,
                dst_grid: tuple[int, int], flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Resample per-patch scores defined over ``src_box`` onto the patch grid of ``dst_box``.

    Score ``k`` of the source map belongs to the centre of patch ``k`` (row-major)
    of an ``h x w`` grid laid over ``src_box``. Each destination patch takes the
    bilinearly interpolated score at its own centre, mapped through the boxes,
    with ``align_corners=False`` semantics and one batched ``F.grid_sample`` call.

    Convention:
        Boxes are xyxy in normalised source-image coordinates. A destination
        centre that falls outside the span of the source patch centres (near or
        beyond the edge of ``src_box``) takes the nearest edge value
        (``padding_mode="border"``), so no patch gets an artificial zero score.
        Where ``flip`` is True, the destination view was mirrored left-right after
        cropping, so its patch column ``j`` takes the score of the source position
        of column ``w' - 1 - j``.

    Args:
        scores: (B, h * w) source scores.
        grid: source grid ``(h, w)``.
        src_box: (B, 4) box that the source map covers (the teacher view's box).
        dst_box: (B, 4) box of the destination view.
        dst_grid: destination grid ``(h', w')``, which may differ from ``grid``.
        flip: optional (B,) bool, True where the destination view is flipped.

    Returns:
        (B, h' * w') scores in the dtype of ``scores``. Interpolation runs in float32
        for lower-precision inputs.

    Example:
        >>> scores = torch.arange(4.0).view(1, 4)  # 2x2 map
        >>> whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> left = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
        >>> warp_scores(scores, (2, 2), whole, left, (2, 1))
        tensor([[0., 2.]])
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a (B, N) tensor, got {shape}")
    height, width = _check_grid("grid", grid)
    dst_height, dst_width = _check_grid("dst_grid", dst_grid)
    batch, count = scores.shape
    if count != height * width:
        raise ValueError(f"scores has {count} entries per sample but grid {grid!r} has {height * width} patches")
    _check_boxes("src_box", src_box, batch)
    _check_boxes("dst_box", dst_box, batch)
    if flip is not None and (flip.shape != (batch,) or flip.dtype != torch.bool):
        raise ValueError(f"flip must be a ({batch},) bool tensor, got {tuple(flip.shape)} {flip.dtype}")

    compute_dtype = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
    sampling_grid = box_sampling_grid(dst_box.to(device=scores.device, dtype=compute_dtype), (dst_height, dst_width),
                                      reference=src_box.to(device=scores.device, dtype=compute_dtype), flip=flip)
    score_map = scores.to(compute_dtype).reshape(batch, 1, height, width)
    warped = F.grid_sample(score_map, sampling_grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped.reshape(batch, dst_height * dst_width).to(scores.dtype)
