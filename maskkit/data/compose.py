"""Paste small items onto background canvases, vectorised over a batch (numpy).

Used to render the embedded data set at load time and by benchmarks that build larger
cluttered-object sets (items on a chosen share of the patches) from Fashion-MNIST or CIFAR-10.

Convention: canvases are square, S x S pixels. An item of side ``size`` is resampled (bilinear,
pixel centres aligned) into the square whose top-left pixel is ``top_left = (y, x)``.
Returned boxes are ``xyxy`` in normalised canvas coordinates [0, 1], tight around the pasted
pixels whose alpha is above zero.
"""

from __future__ import annotations

import math

import numpy as np


def tint(gray: np.ndarray, colors: np.ndarray, floor: float = 0.35) -> np.ndarray:
    """Colour gray images: (n, H, W) uint8 and (n, 3) uint8 colours -> (n, H, W, 3) uint8.

    Each pixel becomes ``color * (floor + (1 - floor) * gray / 255)``, so texture stays visible
    at every colour.
    """
    shade = floor + (1.0 - floor) * gray.astype(np.float32)[..., None] / 255.0
    return np.clip(shade * colors.astype(np.float32)[:, None, None, :] + 0.5, 0, 255).astype(np.uint8)


def _resample(items: np.ndarray, sizes: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of (n, h, w[, c]) items to sizes x sizes, padded into (n, M, M[, c]) float32 plus validity."""
    n, height, width = items.shape[:3]
    grid = np.arange(max_size, dtype=np.float32)
    valid = grid[None, :] < sizes[:, None]  # (n, M)
    scale_y = height / sizes.astype(np.float32)
    scale_x = width / sizes.astype(np.float32)
    source_y = np.clip((grid[None, :] + 0.5) * scale_y[:, None] - 0.5, 0, height - 1)
    source_x = np.clip((grid[None, :] + 0.5) * scale_x[:, None] - 0.5, 0, width - 1)
    y0 = np.floor(source_y).astype(np.int64)
    x0 = np.floor(source_x).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    wy = (source_y - y0)[:, :, None]
    wx = (source_x - x0)[:, None, :]
    rows = np.arange(n)[:, None, None]
    values = items.astype(np.float32)
    if values.ndim == 4:
        wy, wx = wy[..., None], wx[..., None]
    top = values[rows, y0[:, :, None], x0[:, None, :]] * (1 - wx) + values[rows, y0[:, :, None], x1[:, None, :]] * wx
    bottom = values[rows, y1[:, :, None], x0[:, None, :]] * (1 - wx) + values[rows, y1[:, :, None], x1[:, None, :]] * wx
    resized = top * (1 - wy) + bottom * wy
    return resized, valid[:, :, None] & valid[:, None, :]


def compose(backgrounds: np.ndarray, items: np.ndarray, top_left: np.ndarray, sizes: np.ndarray,
            item_colors: np.ndarray | None = None, alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste one item on each canvas.

    Args:
        backgrounds: (n, S, S, 3) uint8 canvases.
        items: (n, h, w) uint8 gray items or (n, h, w, 3) uint8 colour items. Gray items
            (Fashion-MNIST style) are pasted in ``item_colors`` with their intensity as alpha, scaled
            so each item's brightest pixel is opaque. Colour items (CIFAR-10 style) are pasted
            opaque unless ``alpha`` is given.
        top_left: (n, 2) int (y, x) pixel of the item square's top-left corner.
        sizes: (n,) int side of the pasted square in pixels; the square must lie inside the canvas.
        item_colors: (n, 3) uint8 colours for gray items; required for gray items.
        alpha: optional (n, h, w) float in [0, 1] for colour items.

    Returns:
        images (n, S, S, 3) uint8 and boxes (n, 4) float32 normalised ``xyxy`` around the pixels
        with alpha > 0 (the whole square for opaque items).
    """
    backgrounds = np.asarray(backgrounds)
    items = np.asarray(items)
    top_left = np.asarray(top_left, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    n, canvas = backgrounds.shape[0], backgrounds.shape[1]
    if backgrounds.ndim != 4 or backgrounds.shape[2] != canvas or backgrounds.shape[3] != 3:
        raise ValueError(f"backgrounds must be (n, S, S, 3), got shape {backgrounds.shape}")
    if items.shape[0] != n or top_left.shape != (n, 2) or sizes.shape != (n,):
        raise ValueError(f"items {items.shape}, top_left {top_left.shape} and sizes {sizes.shape} must match n={n}")
    if n and (sizes.min() < 1 or (top_left < 0).any() or (top_left + sizes[:, None] > canvas).any()):
        raise ValueError(f"every item square must have size >= 1 and lie inside the {canvas}x{canvas} canvas")
    gray = items.ndim == 3
    if gray and item_colors is None:
        raise ValueError("item_colors (n, 3) is required for gray items")
    if n == 0:
        return backgrounds.copy(), np.zeros((0, 4), np.float32)

    max_size = int(sizes.max())
    if gray:
        intensity, valid = _resample(items, sizes, max_size)
        peak = np.maximum(items.reshape(n, -1).max(axis=1), 1).astype(np.float32)
        weight = np.minimum(intensity / peak[:, None, None], 1.0)
        color = np.broadcast_to(np.asarray(item_colors, np.float32)[:, None, None, :], (n, max_size, max_size, 3))
    else:
        color, valid = _resample(items, sizes, max_size)
        source_alpha = np.ones(items.shape[:3], np.float32) if alpha is None else np.asarray(alpha, np.float32)
        weight, _ = _resample(source_alpha, sizes, max_size)
    weight = np.where(valid, weight, 0.0)

    sample, row, col = np.nonzero(valid)
    y = top_left[sample, 0] + row
    x = top_left[sample, 1] + col
    images = backgrounds.copy()
    under = images[sample, y, x].astype(np.float32)
    w = weight[sample, row, col][:, None]
    images[sample, y, x] = np.clip(under * (1 - w) + color[sample, row, col] * w + 0.5, 0, 255).astype(np.uint8)
    return images, _tight_boxes(weight > 0, top_left, canvas)


def _tight_boxes(present: np.ndarray, top_left: np.ndarray, canvas: int) -> np.ndarray:
    """Normalised xyxy boxes of the True pixels of (n, M, M) masks placed at top_left; empty masks give a zero box."""
    n, size = present.shape[0], present.shape[1]
    index = np.arange(size)
    rows, cols = present.any(axis=2), present.any(axis=1)
    any_pixel = rows.any(axis=1)
    y0 = np.where(rows, index, size).min(axis=1)
    y1 = np.where(rows, index + 1, 0).max(axis=1)
    x0 = np.where(cols, index, size).min(axis=1)
    x1 = np.where(cols, index + 1, 0).max(axis=1)
    boxes = np.stack([x0 + top_left[:, 1], y0 + top_left[:, 0], x1 + top_left[:, 1], y1 + top_left[:, 0]], axis=1)
    boxes = np.where(any_pixel[:, None], boxes, 0)
    return (boxes / canvas).astype(np.float32)


def item_size_for_patch_share(patch_share: float, canvas_size: int) -> int:
    """Side in pixels of a square item whose area is ``patch_share`` of the canvas (about that share of the patches)."""
    if not 0 < patch_share <= 1:
        raise ValueError(f"patch_share must be in (0, 1], got {patch_share}")
    return max(1, round(canvas_size * math.sqrt(patch_share)))


def sample_placements(n: int, canvas_size: int, size_range: tuple[int, int],
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw item sides uniformly in ``size_range`` (inclusive) and top-left corners uniformly inside the canvas.

    Returns top_left (n, 2) int and sizes (n,) int.
    """
    low, high = size_range
    if not 1 <= low <= high <= canvas_size:
        raise ValueError(f"size_range must satisfy 1 <= low <= high <= canvas_size={canvas_size}, got {size_range}")
    sizes = rng.integers(low, high + 1, size=n)
    top_left = (rng.random((n, 2)) * (canvas_size - sizes[:, None] + 1)).astype(np.int64)
    return top_left, sizes


def sample_color_pairs(n: int, rng: np.random.Generator, min_distance: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw random (item, background) uint8 RGB colour pairs at least ``min_distance`` apart in RGB.

    Rejection sampling over a batch of candidates, so the item stays visible whatever its colour.
    """
    item = np.zeros((n, 3), np.uint8)
    background = np.zeros((n, 3), np.uint8)
    todo = np.arange(n)
    while todo.size:
        first = rng.integers(0, 256, size=(todo.size, 3))
        second = rng.integers(0, 256, size=(todo.size, 3))
        ok = np.linalg.norm(first - second, axis=1) >= min_distance
        item[todo[ok]], background[todo[ok]] = first[ok], second[ok]
        todo = todo[~ok]
    return item, background


def crop_backgrounds(textures: np.ndarray, texture_index: np.ndarray, offsets: np.ndarray,
                     orientation: np.ndarray, canvas_size: int) -> np.ndarray:
    """Cut (n, S, S) gray windows from (T, H, W) textures at (y, x) offsets, then rotate by 90 * (orientation % 4)
    degrees and mirror when orientation >= 4 (8 orientations)."""
    index = np.arange(canvas_size)
    rows = offsets[:, 0, None, None] + index[None, :, None]
    cols = offsets[:, 1, None, None] + index[None, None, :]
    windows = textures[texture_index[:, None, None], rows, cols]
    out = np.empty_like(windows)
    for code in range(8):  # loop over the 8 orientations, not over samples
        chosen = orientation == code
        if chosen.any():
            view = np.rot90(windows[chosen], k=code % 4, axes=(1, 2))
            out[chosen] = view[:, :, ::-1] if code >= 4 else view
    return out


def render_arrays(arrays: dict, indices: np.ndarray, canvas_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Compose the samples ``indices`` of a split stored as arrays (the layout ``build_split`` writes).

    Returns (n, S, S, 3) uint8 images and (n, 4) float32 normalised xyxy item boxes. Gray items are
    pasted in their ``item_colors`` and colour items as they are.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    gray = crop_backgrounds(arrays["textures"], arrays["texture_index"][indices],
                            arrays["offsets"][indices].astype(np.int64), arrays["orientation"][indices], canvas_size)
    backgrounds = tint(gray, arrays["background_colors"][indices])
    items = arrays["items"][indices]
    colors = arrays["item_colors"][indices] if items.ndim == 3 else None
    return compose(backgrounds, items, arrays["top_left"][indices].astype(np.int64),
                   arrays["sizes"][indices].astype(np.int64), item_colors=colors)
