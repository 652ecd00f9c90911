"""Box sampling and box geometry for view generators.

Convention: a box is a row ``(x0, y0, x1, y1)`` of floats in normalised
source-image coordinates. 0 is the left (top) edge of the image and 1 the right
(bottom) edge, so a box covers the area of the pixels, not their centres. Batches of boxes are (B, 4). A view of ``h x w`` pixels (or
patches) made from a box samples the source at the centres of its cells, the
``grid_sample`` ``align_corners=False`` convention.

Every sampler draws all its random numbers for the batch in one call on the
given generator's device, so sampling is reproducible and needs no host sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from maskkit.views.blur import gaussian_blur

__all__ = [
    "CropSpec",
    "sample_crop_boxes",
    "sample_containing_boxes",
    "union_boxes",
    "whole_image_boxes",
    "boxes_contain",
    "box_sampling_grid",
    "crop_resize",
]


def _check_range(name: str, value, low: float, high: float, *, positive: bool = False) -> tuple[float, float]:
    """Validate a ``(min, max)`` pair inside ``[low, high]`` and return it as floats."""
    try:
        first, second = (float(item) for item in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {value!r}") from None
    if not (low <= first <= second <= high) or (positive and first <= 0):
        bound = f"({low}, {high}]" if positive else f"[{low}, {high}]"
        raise ValueError(f"{name} must satisfy min <= max inside {bound}, got {value!r}")
    return first, second


@dataclass(frozen=True)
class CropSpec:
    """Random resized crop settings.

    Attributes:
        scale: range of the crop area as a fraction of the image area, inside (0, 1].
        ratio: range of the crop aspect ratio (width / height, in pixels), sampled
            log-uniformly.
        attempts: candidate boxes drawn per sample. The first one that fits inside
            the image is used. A sample with none falls back to the largest
            centred box whose aspect ratio is inside ``ratio``.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10

    def __post_init__(self):
        object.__setattr__(self, "scale", _check_range("scale", self.scale, 0.0, 1.0, positive=True))
        object.__setattr__(self, "ratio", _check_range("ratio", self.ratio, 0.0, math.inf, positive=True))
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an integer >= 1, got {self.attempts!r}")


def whole_image_boxes(batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return (B, 4) boxes ``(0, 0, 1, 1)`` covering the whole image."""
    # Filled on the device: torch.tensor(values, device=...) would wait for a host-to-device copy.
    boxes = torch.zeros((batch_size, 4), device=device, dtype=dtype)
    boxes[:, 2:] = 1.0
    return boxes


def sample_crop_boxes(batch_size: int, spec: CropSpec, generator: Optional[torch.Generator],
                      device=None, aspect: float = 1.0) -> torch.Tensor:
    """Sample random resized crop boxes, one per sample, in a single batched draw.

    Args:
        batch_size: number of boxes B.
        spec: area and aspect-ratio ranges.
        generator: source of randomness, which must live on ``device``. None uses the
            global generator of ``device``.
        device: device of the returned boxes.
        aspect: source image width / height in pixels, so ``spec.ratio`` applies to
            pixels of non-square images.

    Returns:
        (B, 4) float32 xyxy boxes inside [0, 1].
    """
    attempts = spec.attempts
    draws = torch.rand((batch_size, 2 * attempts + 2), generator=generator, device=device)
    area_low, area_high = spec.scale
    area = area_low + (area_high - area_low) * draws[:, :attempts]
    log_low, log_high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    ratio = torch.exp(log_low + (log_high - log_low) * draws[:, attempts:2 * attempts])

    # Normalised sizes: (w * W) * (h * H) = area * W * H and (w * W) / (h * H) = ratio.
    widths = torch.sqrt(area * ratio / aspect)
    heights = torch.sqrt(area * aspect / ratio)
    fits = (widths <= 1.0) & (heights <= 1.0)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # first fitting attempt
    any_fit = fits.any(dim=1)

    fallback_width = 1.0 if aspect <= spec.ratio[1] else spec.ratio[1] / aspect
    fallback_height = 1.0 if aspect >= spec.ratio[0] else aspect / spec.ratio[0]
    width = torch.where(any_fit, widths.gather(1, first).squeeze(1), fallback_width)
    height = torch.where(any_fit, heights.gather(1, first).squeeze(1), fallback_height)

    position_x = torch.where(any_fit, draws[:, -2], 0.5)
    position_y = torch.where(any_fit, draws[:, -1], 0.5)
    x0 = (1.0 - width) * position_x
    y0 = (1.0 - height) * position_y
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=1)


def union_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Return the smallest boxes containing all of ``boxes`` (V, B, 4), shape (B, 4)."""
    low = boxes[..., :2].amin(dim=0)
    high = boxes[..., 2:].amax(dim=0)
    return torch.cat([low, high], dim=-1)


def boxes_contain(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Return a (B,) bool tensor, True where ``outer`` (B, 4) contains ``inner`` (B, 4)."""
    return (outer[:, :2] <= inner[:, :2]).all(dim=1) & (outer[:, 2:] >= inner[:, 2:]).all(dim=1)


def _grow_interval(low: torch.Tensor, high: torch.Tensor, length: torch.Tensor):
    """Grow ``[low, high]`` to ``length`` (<= 1) around its centre, shifted to stay inside [0, 1].

    The result contains the input interval because ``length >= high - low``.
    """
    centre = (low + high) / 2
    new_low = torch.minimum(torch.maximum(centre - length / 2, torch.zeros_like(low)), 1.0 - length)
    new_low = torch.minimum(new_low, low)
    new_high = torch.maximum((new_low + length).clamp(max=1.0), high)
    return new_low, new_high


def sample_containing_boxes(inner: torch.Tensor, generator: Optional[torch.Generator],
                            ratio: Optional[tuple[float, float]] = (3 / 4, 4 / 3),
                            aspect: float = 1.0) -> torch.Tensor:
    """Sample boxes that contain ``inner`` and lie inside the image.

    Each side is drawn uniformly between the side of ``inner`` and the image
    border, so the result lies between ``inner`` and the whole image. When its
    aspect ratio (width / height in pixels) falls outside ``ratio``, the shorter
    side is grown around its centre until the ratio reaches the range or the box
    spans the image in that direction. So the ratio stays inside ``ratio``
    whenever that is possible without cutting into ``inner``.

    Args:
        inner: (B, 4) xyxy boxes to contain, inside [0, 1].
        generator: source of randomness on ``inner``'s device, or None for the
            global generator.
        ratio: allowed aspect-ratio range, or None to keep the drawn boxes.
        aspect: source image width / height in pixels.

    Returns:
        (B, 4) boxes with ``out[:, :2] <= inner[:, :2]`` and ``out[:, 2:] >= inner[:, 2:]``
        for every sample, exactly (no rounding tolerance needed).
    """
    draws = torch.rand((inner.shape[0], 4), generator=generator, device=inner.device, dtype=inner.dtype)
    x0 = inner[:, 0] * draws[:, 0]
    y0 = inner[:, 1] * draws[:, 1]
    x1 = inner[:, 2] + (1.0 - inner[:, 2]) * draws[:, 2]
    y1 = inner[:, 3] + (1.0 - inner[:, 3]) * draws[:, 3]
    if ratio is None:
        return torch.stack([x0, y0, x1, y1], dim=1)

    ratio_low, ratio_high = _check_range("ratio", ratio, 0.0, math.inf, positive=True)
    width, height = x1 - x0, y1 - y0
    box_ratio = width * aspect / height.clamp_min(1e-12)
    too_tall = box_ratio < ratio_low
    too_wide = box_ratio > ratio_high

    target_width = (ratio_low * height / aspect).clamp(max=1.0)
    grown_x0, grown_x1 = _grow_interval(x0, x1, torch.maximum(target_width, width))
    target_height = (width * aspect / ratio_high).clamp(max=1.0)
    grown_y0, grown_y1 = _grow_interval(y0, y1, torch.maximum(target_height, height))

    x0 = torch.where(too_tall, grown_x0, x0)
    x1 = torch.where(too_tall, grown_x1, x1)
    y0 = torch.where(too_wide, grown_y0, y0)
    y1 = torch.where(too_wide, grown_y1, y1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def box_sampling_grid(boxes: torch.Tensor, size: tuple[int, int], reference: Optional[torch.Tensor] = None,
                      flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Build a ``grid_sample`` grid that samples ``boxes`` at the centres of an ``h x w`` grid.

    Args:
        boxes: (B, 4) xyxy boxes to sample.
        size: output grid ``(h, w)``.
        reference: (B, 4) box that the sampled tensor covers, or None for the
            whole image. Grid coordinates are relative to it (-1 and 1 are its
            edges, ``align_corners=False``). Points outside it fall outside [-1, 1].
        flip: optional (B,) bool. Where True, output column ``j`` samples the
            mirrored position, as if the view were flipped left-right after cropping.

    Returns:
        (B, h, w, 2) grid of (x, y) coordinates in the dtype of ``boxes``.
    """
    height, width = size
    batch = boxes.shape[0]
    centres_x = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    centres_y = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    fraction_x = centres_x.expand(batch, width)
    if flip is not None:
        fraction_x = torch.where(flip[:, None], 1.0 - fraction_x, fraction_x)

    x = boxes[:, 0:1] + fraction_x * (boxes[:, 2:3] - boxes[:, 0:1])
    y = boxes[:, 1:2] + centres_y[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    if reference is not None:
        x = (x - reference[:, 0:1]) / (reference[:, 2:3] - reference[:, 0:1])
        y = (y - reference[:, 1:2]) / (reference[:, 3:4] - reference[:, 1:2])
    grid_x = (2.0 * x - 1.0)[:, None, :].expand(batch, height, width)
    grid_y = (2.0 * y - 1.0)[:, :, None].expand(batch, height, width)
    return torch.stack([grid_x, grid_y], dim=-1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int],
                flip: Optional[torch.Tensor] = None, antialias: bool = True) -> torch.Tensor:
    """Crop every image to its box and resize it to ``size`` in one batched resampling.

    Bilinear ``grid_sample`` at the output pixel centres. When ``size`` is smaller
    than the input and ``antialias`` is set, each sample is first blurred with a
    Gaussian whose standard deviation is ``(s - 1) / 2`` source pixels per axis.
    Here ``s`` is that sample's shrink factor (box pixels per output pixel), as in
    ``skimage.transform.resize``. A sample that is not shrunk (``s <= 1``) gets a
    negligible sigma and is left unchanged.

    Args:
        images: (B, C, H, W) floating-point images.
        boxes: (B, 4) xyxy boxes in [0, 1].
        size: output ``(h, w)``.
        flip: optional (B,) bool. True mirrors that sample's crop left-right.
        antialias: blur before shrinking when ``size`` is below the input size.

    Returns:
        (B, C, h, w) crops in the dtype of ``images``.
    """
    out_height, out_width = size
    in_height, in_width = images.shape[-2:]
    boxes = boxes.to(images.dtype)
    if antialias and (out_height < in_height or out_width < in_width):
        shrink_y = (boxes[:, 3] - boxes[:, 1]) * in_height / out_height
        shrink_x = (boxes[:, 2] - boxes[:, 0]) * in_width / out_width
        sigma = (torch.stack([shrink_y, shrink_x], dim=1) - 1.0).clamp_min(0.0) / 2
        # Kernel sized for the largest possible shrink (the whole image), so it is known without a sync.
        max_sigma = (max(in_height / out_height, in_width / out_width) - 1.0) / 2
        kernel = min(2 * math.ceil(3 * max_sigma) + 1, 2 * (min(in_height, in_width) // 2) - 1)
        kernel = max(kernel, 3)
        images = gaussian_blur(images, sigma.clamp_min(1e-3), (kernel, kernel))
    grid = box_sampling_grid(boxes, (out_height, out_width), flip=flip)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
