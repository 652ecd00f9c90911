"""View generators: box sampling, crops, colour operations, determinism and input handling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from maskkit.registry import build_view_generator, list_view_generators
from maskkit.views import (
    ACLIPViews,
    ColourSpec,
    CropSpec,
    MultiCropViews,
    SingleView,
    SLIPViews,
    ViewSpec,
    Views,
    crop_resize,
    rank_generator,
    sample_containing_boxes,
    sample_crop_boxes,
    warp_scores,
)
from maskkit.views.boxes import boxes_contain
from maskkit.views.blur import blur_kernel_size, gaussian_blur
from maskkit.views.colour import apply_colour, jitter_colour, sample_colour_params

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(batch: int = 4, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=seeded(seed))


def coordinate_images(batch: int, height: int, width: int) -> torch.Tensor:
    """Images whose channels hold the x and y image coordinates of each pixel centre."""
    x = ((torch.arange(width) + 0.5) / width).expand(height, width)
    y = ((torch.arange(height) + 0.5) / height)[:, None].expand(height, width)
    return torch.stack([x, y, torch.full_like(x, 0.5)]).expand(batch, 3, height, width).clone()


ALL_GENERATORS = {
    "single": dict(names=("view1",), teacher_index=None),
    "aclip": dict(names=("view1", "view2", "teacher"), teacher_index=2),
    "slip": dict(names=("clip", "simclr1", "simclr2"), teacher_index=None),
}


def test_builtin_generators_are_registered():
    assert {"single", "aclip", "slip", "multi_crop"} <= set(list_view_generators())


@pytest.mark.parametrize("name", sorted(ALL_GENERATORS))
def test_generator_output_shapes(name):
    images = random_images(batch=3, height=32, width=40)
    views = build_view_generator(name, output_size=24)(images, seeded())
    expected = ALL_GENERATORS[name]
    count = len(expected["names"])
    assert isinstance(views, Views)
    assert views.names == expected["names"]
    assert views.teacher_index == expected["teacher_index"]
    assert len(views.views) == count
    for view in views.views:
        assert view.shape == (3, 3, 24, 24)
        assert view.dtype == torch.float32
    assert views.boxes.shape == (count, 3, 4)
    assert views.flipped.shape == (count, 3)
    assert views.flipped.dtype == torch.bool


@pytest.mark.parametrize("name", sorted(ALL_GENERATORS))
def test_boxes_inside_image_and_ordered(name):
    views = build_view_generator(name)(random_images(batch=16), seeded(3))
    assert (views.boxes >= 0).all()
    assert (views.boxes <= 1).all()
    assert (views.boxes[..., 2] > views.boxes[..., 0]).all()
    assert (views.boxes[..., 3] > views.boxes[..., 1]).all()


def test_default_output_size_is_input_size():
    views = SingleView()(random_images(batch=2, height=20, width=28), seeded())
    assert views.views[0].shape == (2, 3, 20, 28)


def test_aclip_half_size_teacher():
    views = ACLIPViews(teacher_size=16)(random_images(batch=2), seeded())
    assert views["teacher"].shape == (2, 3, 16, 16)
    assert views["view1"].shape == (2, 3, 32, 32)


@given(seed=st.integers(0, 2**31), batch=st.integers(1, 9), width=st.sampled_from([16, 24, 40]),
       teacher_box=st.sampled_from(["sampled", "union", "whole"]), flip_p=st.sampled_from([0.0, 0.5]))
def test_aclip_teacher_box_contains_online_boxes(seed, batch, width, teacher_box, flip_p):
    generator = ACLIPViews(teacher_box=teacher_box, flip_p=flip_p, colour=ColourSpec(), output_size=8)
    views = generator(random_images(batch=batch, height=16, width=width), seeded(seed))
    teacher = views.boxes[views.teacher_index]
    assert boxes_contain(teacher, views.boxes[0]).all()
    assert boxes_contain(teacher, views.boxes[1]).all()
    assert (teacher >= 0).all()
    assert (teacher <= 1).all()
    assert not views.flipped[views.teacher_index].any()


@given(seed=st.integers(0, 2**31), corners=st.lists(st.tuples(*[st.floats(0.0, 1.0)] * 4), min_size=1, max_size=8),
       aspect=st.sampled_from([0.5, 1.0, 1.5]))
def test_containing_boxes_property(seed, corners, aspect):
    inner = []
    for x_a, y_a, x_b, y_b in corners:
        x0, x1 = sorted((x_a, x_b))
        y0, y1 = sorted((y_a, y_b))
        inner.append([x0, y0, x1, y1])  # zero-width boxes are allowed
    inner = torch.tensor(inner)
    ratio = (3 / 4, 4 / 3)
    outer = sample_containing_boxes(inner, seeded(seed), ratio=ratio, aspect=aspect)
    assert boxes_contain(outer, inner).all()
    assert (outer >= 0).all()
    assert (outer <= 1).all()
    pixel_ratio = (outer[:, 2] - outer[:, 0]) * aspect / (outer[:, 3] - outer[:, 1])
    # The ratio reaches the range unless the grown side already spans the whole image.
    full_width = (outer[:, 2] - outer[:, 0]) >= 1 - 1e-6
    full_height = (outer[:, 3] - outer[:, 1]) >= 1 - 1e-6
    assert ((pixel_ratio >= ratio[0] - 1e-4) | full_width).all()
    assert ((pixel_ratio <= ratio[1] + 1e-4) | full_height).all()


@given(seed=st.integers(0, 2**31), aspect=st.sampled_from([0.5, 1.0, 4 / 3, 2.0]),
       scale=st.sampled_from([(0.08, 1.0), (0.5, 1.0), (0.3, 0.3)]))
def test_crop_boxes_follow_scale_and_ratio(seed, aspect, scale):
    spec = CropSpec(scale=scale, ratio=(3 / 4, 4 / 3))
    boxes = sample_crop_boxes(64, spec, seeded(seed), aspect=aspect)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all()
    assert (boxes <= 1 + 1e-6).all()
    area = widths * heights
    pixel_ratio = widths * aspect / heights
    assert (area >= scale[0] - 1e-5).all()
    assert (area <= scale[1] + 1e-5).all()
    assert (pixel_ratio >= 3 / 4 - 1e-4).all()
    assert (pixel_ratio <= 4 / 3 + 1e-4).all()


def test_crop_boxes_fall_back_to_centred_box():
    # A 4:1 image has no square crop of 90% of its area, so the fallback is centred with ratio 4/3.
    boxes = sample_crop_boxes(5, CropSpec(scale=(0.9, 1.0), ratio=(1.0, 4 / 3)), seeded(), aspect=4.0)
    expected_width = (4 / 3) / 4.0
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], torch.full((5,), expected_width))
    torch.testing.assert_close(boxes[:, 1], torch.zeros(5))
    torch.testing.assert_close(boxes[:, 3], torch.ones(5))
    torch.testing.assert_close((boxes[:, 0] + boxes[:, 2]) / 2, torch.full((5,), 0.5))


def test_crop_resize_copies_pixel_aligned_box():
    images = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[8 / 32, 4 / 32, 24 / 32, 20 / 32], [0.0, 16 / 32, 16 / 32, 1.0]])
    crops = crop_resize(images, boxes, (16, 16))
    torch.testing.assert_close(crops[0], images[0, :, 4:20, 8:24], atol=1e-5, rtol=0)
    torch.testing.assert_close(crops[1], images[1, :, 16:32, 0:16], atol=1e-5, rtol=0)


def test_crop_resize_flip_mirrors_crop():
    images = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9]]).expand(2, 4)
    flipped = crop_resize(images, boxes, (12, 12), flip=torch.tensor([True, False]))
    plain = crop_resize(images, boxes, (12, 12))
    torch.testing.assert_close(flipped[0], plain[0].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped[1], plain[1], atol=0, rtol=0)


@pytest.mark.parametrize("output_size", [32, 16])
def test_single_view_crop_matches_box(output_size):
    # On a coordinate image every output pixel contains the image position it sampled.
    images = coordinate_images(4, 32, 32)
    views = SingleView(output_size=output_size, **IDENTITY)(images, seeded(5))
    view, boxes = views.views[0], views.boxes[0]
    fraction = (torch.arange(output_size) + 0.5) / output_size
    expected_x = boxes[:, 0:1] + fraction * (boxes[:, 2:3] - boxes[:, 0:1])
    expected_y = boxes[:, 1:2] + fraction * (boxes[:, 3:4] - boxes[:, 1:2])
    # Skip the outer pixels, where border padding or the antialias filter meets the image edge.
    inner = slice(2, output_size - 2)
    torch.testing.assert_close(view[:, 0, 5, inner], expected_x[:, inner], atol=2e-4, rtol=0)
    torch.testing.assert_close(view[:, 1, inner, 5], expected_y[:, inner], atol=2e-4, rtol=0)


def test_single_view_without_crop_is_whole_image():
    images = torch.rand(2, 3, 16, 16)
    views = SingleView(crop=False, **IDENTITY)(images, seeded())
    torch.testing.assert_close(views.boxes[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4))
    torch.testing.assert_close(views.views[0], images, atol=1e-5, rtol=0)


def test_flipped_view_matches_mirrored_crop():
    images = torch.rand(3, 3, 16, 16)
    views = SingleView(flip_p=1.0, **IDENTITY)(images, seeded(2))
    assert views.flipped.all()
    expected = crop_resize(images, views.boxes[0], (16, 16)).flip(-1)
    torch.testing.assert_close(views.views[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(ALL_GENERATORS) + ["multi_crop"])
def test_same_seed_same_views(name):
    options = dict(specs=[ViewSpec(name="a", colour=ColourSpec.simclr(), flip_p=0.5)]) if name == "multi_crop" else {}
    generator = build_view_generator(name, **options)
    images = random_images()
    first, second = generator(images, seeded(11)), generator(images, seeded(11))
    for view_a, view_b in zip(first.views, second.views):
        assert torch.equal(view_a, view_b)
    assert torch.equal(first.boxes, second.boxes)
    assert torch.equal(first.flipped, second.flipped)


@pytest.mark.parametrize("name", sorted(ALL_GENERATORS))
def test_different_seeds_different_views(name):
    generator = build_view_generator(name)
    images = random_images()
    first, second = generator(images, seeded(1)), generator(images, seeded(2))
    assert not torch.equal(first.boxes, second.boxes)
    assert not torch.equal(first.views[0], second.views[0])


def test_online_views_differ_from_each_other():
    views = ACLIPViews()(random_images(), seeded())
    assert not torch.equal(views.boxes[0], views.boxes[1])
    assert not torch.equal(views["view1"], views["view2"])


@pytest.mark.parametrize("name", sorted(ALL_GENERATORS) + ["multi_crop"])
def test_global_rng_untouched(name):
    options = dict(specs=[ViewSpec(colour=ColourSpec.aclip(), flip_p=0.5)]) if name == "multi_crop" else {}
    generator = build_view_generator(name, **options)
    state = torch.get_rng_state()
    generator(random_images(), seeded())
    assert torch.equal(torch.get_rng_state(), state)


def test_teacher_view_has_no_colour_change():
    images = random_images(batch=6)
    generator = ACLIPViews(colour=ColourSpec(brightness=0.8, jitter_p=1.0, grayscale_p=1.0, solarize_p=1.0),
                           **IDENTITY)
    views = generator(images, seeded(4))
    expected = crop_resize(images.float() / 255, views.boxes[2], (32, 32))
    torch.testing.assert_close(views["teacher"], expected, atol=1e-6, rtol=0)
    # The online views, with grayscale p=1, have equal channels, but the teacher keeps its colours.
    torch.testing.assert_close(views["view1"][:, 0], views["view1"][:, 1], atol=1e-6, rtol=0)
    assert not torch.allclose(views["teacher"][:, 0], views["teacher"][:, 1])


@pytest.mark.parametrize("name", sorted(ALL_GENERATORS))
def test_uint8_float_and_normalized_inputs_agree(name):
    images = random_images(batch=4)
    unit = images.float() / 255
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    from_uint8 = build_view_generator(name)(images, seeded(9))
    from_float = build_view_generator(name)(unit, seeded(9))
    from_normalized = build_view_generator(name, input_normalized=True)((unit - mean) / std, seeded(9))
    for view_uint8, view_float, view_normalized in zip(from_uint8.views, from_float.views, from_normalized.views):
        torch.testing.assert_close(view_float, view_uint8, atol=1e-5, rtol=0)
        torch.testing.assert_close(view_normalized, view_uint8, atol=1e-4, rtol=0)


def whole_image_view(colour: ColourSpec, images: torch.Tensor) -> torch.Tensor:
    generator = MultiCropViews([ViewSpec(name="only", crop=None, colour=colour)], **IDENTITY)
    return generator(images, seeded())["only"]


def test_solarize_p1_matches_direct():
    images = torch.rand(3, 3, 16, 16)
    result = whole_image_view(ColourSpec(solarize_p=1.0), images)
    expected = torch.where(images < 0.5, images, 1 - images)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


def test_grayscale_p1_matches_direct():
    images = torch.rand(3, 3, 16, 16)
    result = whole_image_view(ColourSpec(grayscale_p=1.0), images)
    gray = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    torch.testing.assert_close(result, gray[:, None].expand(-1, 3, -1, -1), atol=1e-5, rtol=0)


def test_blur_p1_matches_direct():
    images = torch.rand(2, 3, 64, 64)
    sigma = 1.3
    result = whole_image_view(ColourSpec(blur_p=1.0, blur_sigma=(sigma, sigma)), images)
    size = blur_kernel_size(64)
    assert size == 7
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    kernel_2d = (kernel[:, None] * kernel[None, :]).expand(3, 1, size, size)
    padded = F.pad(images, (size // 2,) * 4, mode="reflect")
    expected = F.conv2d(padded, kernel_2d, groups=3)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


def test_blur_touches_only_selected_samples():
    images = torch.rand(16, 3, 32, 32)
    spec = ColourSpec(blur_p=0.5)
    params = sample_colour_params(spec, 16, seeded(2))
    assert 0 < int(params.blur.sum()) < 16
    result = apply_colour(images, spec, params)
    blurred = gaussian_blur(images, params.sigma[:, None].expand(-1, 2), (3, 3))
    expected = torch.where(params.blur[:, None, None, None], blurred, images)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    assert torch.equal(result[~params.blur], images[~params.blur])


def test_blur_kernel_scales_with_size():
    assert blur_kernel_size(224) == 23
    assert blur_kernel_size(32) == 3
    assert blur_kernel_size(8) == 3
    assert all(blur_kernel_size(side) % 2 == 1 for side in range(1, 300))


def test_brightness_factors_in_range_per_sample():
    images = torch.full((32, 3, 8, 8), 0.5)
    result = whole_image_view(ColourSpec(brightness=0.4, jitter_p=1.0), images)
    per_sample = result.flatten(1)
    assert torch.equal(per_sample.amin(1), per_sample.amax(1))
    factors = per_sample[:, 0] / 0.5
    assert (factors >= 0.6 - 1e-6).all()
    assert (factors <= 1.4 + 1e-6).all()
    assert factors.std() > 0.05


def test_jitter_probability_leaves_other_samples_exact():
    images = torch.rand(64, 3, 8, 8)
    result = whole_image_view(ColourSpec(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_p=0.5), images)
    unchanged = (result == images).flatten(1).all(1)
    assert 10 < int(unchanged.sum()) < 54


def test_identity_factors_change_nothing():
    images = torch.rand(5, 3, 16, 16)
    ones, zeros = torch.ones(5), torch.zeros(5)
    assert torch.equal(jitter_colour(images, ones, ones, ones, zeros), images)
    assert torch.equal(jitter_colour(images, hue=zeros), images)


def luma(images: torch.Tensor) -> torch.Tensor:
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]


@given(seed=st.integers(0, 2**16), low=st.floats(0.0, 1.0), high=st.floats(1.0, 2.0))
def test_jitter_factors_match_formulas(seed, low, high):
    images = torch.rand(4, 3, 8, 8, generator=seeded(seed))
    factors = torch.tensor([low, high, 1.0, 0.5 * (low + high)])
    per_sample = factors[:, None, None, None]
    brightness = jitter_colour(images, brightness=factors)
    torch.testing.assert_close(brightness, (images * per_sample).clamp(0, 1), atol=1e-6, rtol=0)
    mean = luma(images).mean(dim=(2, 3), keepdim=True)
    contrast = jitter_colour(images, contrast=factors)
    torch.testing.assert_close(contrast, (per_sample * images + (1 - per_sample) * mean).clamp(0, 1),
                               atol=1e-5, rtol=0)
    saturation = jitter_colour(images, saturation=factors)
    torch.testing.assert_close(saturation, (per_sample * images + (1 - per_sample) * luma(images)).clamp(0, 1),
                               atol=1e-5, rtol=0)
    # Brightness is clamped before contrast takes its mean, as in torchvision.
    both = jitter_colour(images, brightness=factors, contrast=factors)
    bright = (images * per_sample).clamp(0, 1)
    expected = (per_sample * bright + (1 - per_sample) * luma(bright).mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=0)


def test_hue_turn_against_hsv():
    from kornia.enhance import adjust_hue

    shifts = torch.tensor([0.05, -0.05, 0.1, -0.1, 0.5, 0.0])
    gray = torch.rand(6, 1, 8, 8).expand(-1, 3, -1, -1)
    torch.testing.assert_close(jitter_colour(gray, hue=shifts), gray, atol=1e-6, rtol=0)
    # Pure red turns towards yellow for positive shifts and towards magenta for negative ones, as in HSV.
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(6, -1, -1, -1)
    turned = jitter_colour(red, hue=shifts).flatten(1)
    assert (turned[[0, 2], 1] > 0.1).all()
    assert (turned[[0, 2], 2] == 0).all()
    assert (turned[[1, 3], 2] > 0.1).all()
    assert (turned[[1, 3], 1] == 0).all()
    # A half turn maps a colour to its complement about the mean of its channels.
    colours = torch.rand(6, 3, 8, 8)
    half = jitter_colour(colours, hue=torch.full((6,), 0.5))
    complement = (2 * colours.mean(dim=1, keepdim=True) - colours).clamp(0, 1)
    torch.testing.assert_close(half, complement, atol=1e-5, rtol=0)
    # Against kornia's HSV shift: for 0.05 turn on random pixels the mean difference is about 0.04 (the
    # shift itself moves values by about 0.05) and the largest about 0.14. The module docstring explains the gap.
    images = torch.rand(32, 3, 16, 16, generator=seeded(3))
    moderate = torch.where(torch.rand(32, generator=seeded(4)) < 0.5, 0.05, -0.05)
    reference = adjust_hue(images, moderate * (2 * math.pi))
    difference = (jitter_colour(images, hue=moderate) - reference).abs()
    assert difference.mean() < 0.045
    assert difference.max() < 0.2
    assert (reference - images).abs().mean() > 0.045


def test_slip_clip_view_is_plain_crop():
    images = random_images(batch=4)
    views = SLIPViews(**IDENTITY)(images, seeded(6))
    expected = crop_resize(images.float() / 255, views.boxes[0], (32, 32))
    torch.testing.assert_close(views["clip"], expected, atol=1e-6, rtol=0)
    assert not views.flipped[0].any()


def test_multi_crop_per_view_sizes_and_names():
    specs = [dict(name="global", size=32), dict(name="local", crop=dict(scale=(0.05, 0.3)), size=16)]
    generator = MultiCropViews(specs, names=["g", "l"], teacher_index=0)
    views = generator(random_images(), seeded())
    assert views.names == ("g", "l")
    assert views["g"].shape[-2:] == (32, 32)
    assert views["l"].shape[-2:] == (16, 16)
    assert views.teacher_index == 0
    areas = (views.boxes[1, :, 2] - views.boxes[1, :, 0]) * (views.boxes[1, :, 3] - views.boxes[1, :, 1])
    assert (areas <= 0.3 + 1e-5).all()


def test_teacher_scores_warp_onto_view_positions():
    # A teacher "score" equal to the image x coordinate, warped to view1, gives view1's patch x positions.
    images = coordinate_images(4, 32, 32)
    views = ACLIPViews(colour=ColourSpec(), **IDENTITY)(images, seeded(8))
    teacher_map = F.avg_pool2d(views["teacher"][:, 0:1], 4).flatten(1)  # 8x8 patches of 4 px
    warped = warp_scores(teacher_map, (8, 8), views.boxes[2], views.boxes[0], (8, 8))
    view_map = F.avg_pool2d(views["view1"][:, 0:1], 4).flatten(1)
    torch.testing.assert_close(warped.view(4, 8, 8)[:, :, 1:-1], view_map.view(4, 8, 8)[:, :, 1:-1],
                               atol=2e-3, rtol=0)


def test_rank_generator_single_process_uses_seed():
    generator = rank_generator(123)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=seeded(123)))
    assert not torch.equal(torch.rand(4, generator=rank_generator(1)), torch.rand(4, generator=rank_generator(2)))


def _draw_on_rank(rank: int, world_size: int, init_file: str, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        queue.put((rank, torch.rand(4, generator=rank_generator(7)).tolist()))
        # Without a barrier a fast rank can tear down its connections while the
        # other is still completing gloo's connection mesh.
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rank_generator_differs_across_ranks(tmp_path):
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_draw_on_rank, args=(rank, 2, str(tmp_path / "init"), queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    draws = dict(queue.get(timeout=100) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert draws[0] == torch.rand(4, generator=seeded(7)).tolist()
    assert draws[0] != draws[1]


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: CropSpec(scale=(0.0, 1.0)), "scale"),
        (lambda: CropSpec(ratio=(2.0, 1.0)), "ratio"),
        (lambda: ColourSpec(hue=0.7), "hue"),
        (lambda: ColourSpec(blur_p=1.5), "blur_p"),
        (lambda: ViewSpec(flip_p=-0.1), "flip_p"),
        (lambda: ACLIPViews(teacher_box="box"), "teacher_box"),
        (lambda: MultiCropViews([ViewSpec(name="a"), ViewSpec(name="a")]), "unique"),
        (lambda: SingleView(output_size=(0, 4)), "output_size"),
    ],
)
def test_invalid_settings_are_named(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_invalid_images_are_rejected():
    with pytest.raises(ValueError, match="images"):
        SingleView()(torch.rand(3, 32, 32), seeded())
    with pytest.raises(ValueError, match="input_normalized"):
        SingleView(input_normalized=True)(random_images(), seeded())
    with pytest.raises(ValueError, match="images"):
        SingleView()(torch.zeros(1, 3, 8, 8, dtype=torch.int32), seeded())


def test_generator_adds_no_state_dict_keys():
    assert ACLIPViews().state_dict() == {}
    assert math.isclose(float(ACLIPViews().mean[0, 0]), 0.48145466, rel_tol=1e-6)


def test_shrinking_crop_is_antialiased():
    noise = torch.rand(2, 3, 64, 64, generator=seeded())
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)
    smooth = crop_resize(noise, whole, (16, 16))
    aliased = crop_resize(noise, whole, (16, 16), antialias=False)
    assert smooth.var() < 0.5 * aliased.var()
    torch.testing.assert_close(smooth.mean(), noise.mean(), atol=0.02, rtol=0)
