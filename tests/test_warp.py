"""warp_scores: exact analytic cases for box-to-box score-map resampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from maskkit.views import warp_scores


def patch_centres(boxes: torch.Tensor, grid: tuple[int, int], flip: torch.Tensor | None = None):
    """Image coordinates (x, y) of the patch centres of each box, each (B, h * w), row-major."""
    height, width = grid
    fraction_x = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    fraction_y = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    fraction_x = fraction_x.expand(boxes.shape[0], width)
    if flip is not None:
        fraction_x = torch.where(flip[:, None], 1 - fraction_x, fraction_x)
    x = boxes[:, 0:1] + fraction_x * (boxes[:, 2:3] - boxes[:, 0:1])
    y = boxes[:, 1:2] + fraction_y * (boxes[:, 3:4] - boxes[:, 1:2])
    return (x[:, None, :].expand(-1, height, width).reshape(boxes.shape[0], -1),
            y[:, :, None].expand(-1, height, width).reshape(boxes.shape[0], -1))


def test_identity_boxes_return_input():
    scores = torch.rand(3, 7 * 5)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.1, 0.5, 0.4]])
    warped = warp_scores(scores, (7, 5), boxes, boxes, (7, 5))
    torch.testing.assert_close(warped, scores, atol=1e-6, rtol=0)


def test_left_half_gets_left_half_of_map():
    scores = torch.rand(2, 4 * 6)
    src = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.8, 0.9]])
    left = src.clone()
    left[:, 2] = (src[:, 0] + src[:, 2]) / 2
    warped = warp_scores(scores, (4, 6), src, left, (4, 3))
    expected = scores.view(2, 4, 6)[:, :, :3].reshape(2, 12)
    torch.testing.assert_close(warped, expected, atol=1e-6, rtol=0)


def test_top_right_quarter_upsampled_grid():
    # A 2x2 destination grid on the top-right quarter of a 4x4 map hits source centres exactly.
    scores = torch.arange(16.0).view(1, 16)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    quarter = torch.tensor([[0.5, 0.0, 1.0, 0.5]])
    warped = warp_scores(scores, (4, 4), whole, quarter, (2, 2))
    torch.testing.assert_close(warped, torch.tensor([[2.0, 3.0, 6.0, 7.0]]))


def test_flipped_view_gets_mirrored_map():
    scores = torch.rand(3, 5 * 4)
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.8]]).expand(3, 4)
    flip = torch.tensor([True, False, True])
    warped = warp_scores(scores, (5, 4), boxes, boxes, (5, 4), flip=flip)
    maps = scores.view(3, 5, 4)
    expected = torch.where(flip[:, None, None], maps.flip(-1), maps).reshape(3, 20)
    torch.testing.assert_close(warped, expected, atol=1e-6, rtol=0)


def test_flipped_left_half_mirrors_that_half():
    scores = torch.rand(1, 4 * 4)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    left = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    warped = warp_scores(scores, (4, 4), whole, left, (4, 2), flip=torch.tensor([True]))
    expected = scores.view(1, 4, 4)[:, :, :2].flip(-1).reshape(1, 8)
    torch.testing.assert_close(warped, expected, atol=1e-6, rtol=0)


box_side = st.tuples(st.floats(0.0, 0.6), st.floats(0.2, 0.4))


@given(src_x=box_side, src_y=box_side, inner=st.tuples(*[st.floats(0.0, 1.0)] * 4),
       flip=st.booleans(), coefficients=st.tuples(*[st.floats(-3.0, 3.0)] * 3))
def test_linear_map_stays_linear(src_x, src_y, inner, flip, coefficients):
    # Teacher 7x7 map of a linear function of image position, warped onto a 14x14 grid.
    src = torch.tensor([[src_x[0], src_y[0], src_x[0] + src_x[1], src_y[0] + src_y[1]]], dtype=torch.float64)
    low_x, high_x = sorted(inner[:2])
    low_y, high_y = sorted(inner[2:])
    width, height = src[0, 2] - src[0, 0], src[0, 3] - src[0, 1]
    dst = torch.stack([src[0, 0] + low_x * width, src[0, 1] + low_y * height,
                       src[0, 0] + max(high_x, low_x + 0.05) * width,
                       src[0, 1] + max(high_y, low_y + 0.05) * height])[None]
    a, b, c = coefficients
    src_x_centres, src_y_centres = patch_centres(src, (7, 7))
    scores = a * src_x_centres + b * src_y_centres + c
    flip_mask = torch.tensor([flip])

    warped = warp_scores(scores, (7, 7), src, dst, (14, 14), flip=flip_mask)

    dst_x, dst_y = patch_centres(dst, (14, 14), flip_mask)
    expected = a * dst_x + b * dst_y + c
    # Only points between the first and last source centres are interpolated. Border padding sets the rest.
    relative_x = (dst_x - src[:, 0:1]) / width
    relative_y = (dst_y - src[:, 1:2]) / height
    interior = ((relative_x >= 0.5 / 7) & (relative_x <= 1 - 0.5 / 7)
                & (relative_y >= 0.5 / 7) & (relative_y <= 1 - 0.5 / 7))
    assert warped.shape == (1, 196)
    torch.testing.assert_close(warped[interior], expected[interior], atol=1e-5, rtol=0)


def test_linear_map_float32_teacher_7_onto_14():
    src = torch.tensor([[0.05, 0.1, 0.95, 0.9], [0.0, 0.0, 1.0, 1.0]])
    dst = torch.tensor([[0.2, 0.3, 0.6, 0.7], [0.25, 0.25, 0.75, 0.75]])
    x, y = patch_centres(src.double(), (7, 7))
    scores = (2 * x - y).float()
    warped = warp_scores(scores, (7, 7), src, dst, (14, 14))
    dst_x, dst_y = patch_centres(dst.double(), (14, 14))
    torch.testing.assert_close(warped, (2 * dst_x - dst_y).float(), atol=1e-5, rtol=0)


def test_points_outside_source_box_take_edge_values():
    # The destination covers the whole image but the map only its middle: no zeros, no extrapolation.
    src = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    scores = torch.arange(1.0, 17.0).view(1, 16)
    warped = warp_scores(scores, (4, 4), src, whole, (8, 8)).view(8, 8)
    assert warped.min() == 1.0
    assert warped.max() == 16.0
    assert warped[0, 0] == 1.0
    assert warped[7, 7] == 16.0


def test_half_precision_scores_keep_dtype():
    scores = torch.rand(2, 49).half()
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)
    warped = warp_scores(scores, (7, 7), boxes, boxes, (14, 14))
    assert warped.dtype == torch.float16
    assert warped.shape == (2, 196)


def test_batched_boxes_are_per_sample():
    scores = torch.rand(2, 16)
    src = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)
    dst = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
    warped = warp_scores(scores, (4, 4), src, dst, (4, 2)).view(2, 4, 2)
    maps = scores.view(2, 4, 4)
    torch.testing.assert_close(warped[0], maps[0, :, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(warped[1], maps[1, :, 2:], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scores=torch.rand(2, 15)), "grid"),
        (dict(src_box=torch.rand(3, 4)), "src_box"),
        (dict(dst_box=torch.rand(2, 2)), "dst_box"),
        (dict(dst_grid=(0, 4)), "dst_grid"),
        (dict(flip=torch.zeros(2)), "flip"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    arguments = dict(scores=torch.rand(2, 16), grid=(4, 4), src_box=torch.rand(2, 4), dst_box=torch.rand(2, 4),
                     dst_grid=(4, 4), flip=None)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        warp_scores(**arguments)
