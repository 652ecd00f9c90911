"""The embedded data set: size, determinism, disjoint splits, boxes, captions, and the composition code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from maskkit.data.build_embedded import build, read_idx
from maskkit.data.compose import (
    compose,
    crop_backgrounds,
    item_size_for_patch_share,
    sample_color_pairs,
    sample_placements,
    tint,
)
from maskkit.data.embedded import (
    ASSET_FILES,
    ASSETS,
    CANVAS_SIZE,
    EMBEDDED_CLASSNAMES,
    EMBEDDED_TEMPLATES,
    EmbeddedDataset,
)

MAX_ASSET_BYTES = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def train():
    return EmbeddedDataset("train")


@pytest.fixture(scope="module")
def test_split():
    return EmbeddedDataset("test")


def backgrounds_of(dataset: EmbeddedDataset, indices: np.ndarray) -> np.ndarray:
    a = dataset.arrays
    gray = crop_backgrounds(a["textures"], a["texture_index"][indices], a["offsets"][indices].astype(np.int64),
                            a["orientation"][indices], CANVAS_SIZE)
    return tint(gray, a["background_colors"][indices])


def test_assets_within_size_cap():
    total = sum(path.stat().st_size for path in ASSETS.iterdir() if path.is_file())
    assert total <= MAX_ASSET_BYTES
    assert (ASSETS / "LICENSE-fashion-mnist.txt").is_file()
    assert "CC0" in (ASSETS / "NOTICE.md").read_text()


def test_sizes_and_class_balance(train, test_split):
    assert len(train) == 5000
    assert len(test_split) == 1000
    assert np.bincount(train.labels).tolist() == [500] * 10
    assert np.bincount(test_split.labels).tolist() == [100] * 10


def test_sample_convention(train):
    sample = train[3]
    assert sample["image"].shape == (3, 112, 112)
    assert sample["image"].dtype == torch.uint8
    assert sample["box"].shape == (4,)
    assert sample["key"] == "embedded_train_00003"
    assert sample["text"] == sample["captions"][0]
    assert len(set(sample["captions"])) == 3
    name = EMBEDDED_CLASSNAMES[sample["label"]]
    assert all(name in caption for caption in sample["captions"])
    assert train[-1]["key"] == "embedded_train_04999"
    with pytest.raises(IndexError):
        train[5000]


def test_loading_is_deterministic(train):
    again = EmbeddedDataset("train")
    first, second = train[11], again[11]
    assert torch.equal(first["image"], second["image"])
    assert torch.equal(first["box"], second["box"])


def test_resized_images_keep_boxes():
    small = EmbeddedDataset("test", image_size=64)
    full = EmbeddedDataset("test")
    assert small[5]["image"].shape == (3, 64, 64)
    assert torch.equal(small[5]["box"], full[5]["box"])


def test_item_sizes_cover_minority_of_patches(train):
    sizes = train.arrays["sizes"]
    assert sizes.min() >= 28
    assert sizes.max() <= 40
    _, boxes = train.render(np.arange(500))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert area.max().item() <= (40 / 112) ** 2 + 1e-6
    assert area.min().item() > 0


def test_boxes_contain_item_pixels(train):
    indices = np.arange(0, 5000, 97)
    images, boxes = train.render(indices)
    backgrounds = torch.from_numpy(backgrounds_of(train, indices)).permute(0, 3, 1, 2)
    changed = (images != backgrounds).any(dim=1)  # (n, H, W) pixels the item altered
    pixel_boxes = (boxes * CANVAS_SIZE).round().long()
    for n in range(len(indices)):
        x0, y0, x1, y1 = pixel_boxes[n].tolist()
        inside = torch.zeros_like(changed[n])
        inside[y0:y1, x0:x1] = True
        assert changed[n].any()
        assert not (changed[n] & ~inside).any(), f"sample {indices[n]} changed pixels outside its box"
        # The box is tight: visible item pixels reach within 1 px of every edge (the box also counts
        # faint resampled edge pixels whose blend rounds back to the background value).
        assert changed[n, y0:y0 + 2, x0:x1].any()
        assert changed[n, y1 - 2:y1, x0:x1].any()
        assert changed[n, y0:y1, x0:x0 + 2].any()
        assert changed[n, y0:y1, x1 - 2:x1].any()


def test_splits_use_disjoint_items_and_backgrounds(train, test_split):
    train_items = {item.tobytes() for item in train.arrays["items"]}
    assert not any(item.tobytes() in train_items for item in test_split.arrays["items"])
    (r0, r1), (c0, c1) = train.arrays["texture_region"].tolist()
    (s0, s1), (t0, t1) = test_split.arrays["texture_region"].tolist()
    rows_overlap = r0 < s1 and s0 < r1
    cols_overlap = c0 < t1 and t0 < c1
    regions_overlap = rows_overlap and cols_overlap
    assert not regions_overlap


def test_texture_crops_match_scikit_image(test_split):
    import skimage.data

    (r0, r1), (c0, c1) = test_split.arrays["texture_region"].tolist()
    for index, name in enumerate(("brick", "grass", "gravel")):
        assert np.array_equal(test_split.arrays["textures"][index], getattr(skimage.data, name)()[r0:r1, c0:c1])


def test_colours_are_no_class_cue(train):
    colors = train.arrays["item_colors"].astype(np.float64)
    per_class = np.stack([colors[train.labels == c].mean(axis=0) for c in range(10)])
    # Uniform random colours: every class mean is near the middle of the range.
    assert np.abs(per_class - 127.5).max() < 15
    distance = np.linalg.norm(colors - train.arrays["background_colors"].astype(np.float64), axis=1)
    assert distance.min() >= 150


def test_templates_and_classnames():
    assert len(EMBEDDED_CLASSNAMES) == 10
    assert EMBEDDED_CLASSNAMES[9] == "ankle boot"
    assert all("{}" in template for template in EMBEDDED_TEMPLATES)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_build_reproduces_shipped_assets(shared_data, tmp_path):
    written = build(shared_data / "fashion-mnist", tmp_path / "seed0", seed=0)
    assert sorted(path.name for path in written) == sorted(ASSET_FILES.values())
    for path in written:
        assert path.read_bytes() == (ASSETS / path.name).read_bytes(), f"{path.name} differs from the shipped file"
    other = build(shared_data / "fashion-mnist", tmp_path / "seed1", seed=1)
    assert other[0].read_bytes() != written[0].read_bytes()


def test_items_come_from_their_fashion_mnist_file(shared_data, train, test_split):
    for dataset, prefix in ((train, "train"), (test_split, "t10k")):
        images = read_idx(shared_data / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(shared_data / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz")
        source = dataset.arrays["source_index"].astype(np.int64)
        assert np.array_equal(images[source], dataset.arrays["items"])
        assert np.array_equal(labels[source], dataset.arrays["labels"])


# ---------------------------------------------------------------- composition


@given(seed=st.integers(0, 2**31 - 1), canvas=st.sampled_from([32, 64, 112]), low=st.integers(4, 20),
       extra=st.integers(0, 12))
def test_compose_gray_boxes_cover_changes(seed, canvas, low, extra):
    rng = np.random.default_rng(seed)
    n = 6
    items = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    items[:, :, :3] = 0  # a blank margin, so boxes are tighter than the square
    top_left, sizes = sample_placements(n, canvas, (low, min(canvas, low + extra)), rng)
    item_colors, background_colors = sample_color_pairs(n, rng)
    backgrounds = np.broadcast_to(background_colors[:, None, None, :], (n, canvas, canvas, 3)).copy()
    images, boxes = compose(backgrounds, items, top_left, sizes, item_colors=item_colors)
    assert images.shape == backgrounds.shape
    changed = (images != backgrounds).any(axis=-1)
    pixel = np.round(boxes * canvas).astype(int)
    for k in range(n):
        x0, y0, x1, y1 = pixel[k]
        assert top_left[k, 1] <= x0 < x1 <= top_left[k, 1] + sizes[k]
        assert top_left[k, 0] <= y0 < y1 <= top_left[k, 0] + sizes[k]
        outside = changed[k].copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()


def test_compose_opaque_colour_item_at_native_size():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    backgrounds = np.zeros((2, 16, 16, 3), np.uint8)
    images, boxes = compose(backgrounds, items, np.array([[0, 0], [5, 8]]), np.array([8, 8]))
    assert np.array_equal(images[0, :8, :8], items[0])
    assert np.array_equal(images[1, 5:13, 8:16], items[1])
    assert images[1, :5].sum() == 0
    assert np.allclose(boxes, [[0, 0, 0.5, 0.5], [0.5, 5 / 16, 1.0, 13 / 16]])


def test_compose_transparent_item_leaves_canvas():
    backgrounds = np.full((1, 20, 20, 3), 77, np.uint8)
    items = np.zeros((1, 28, 28), np.uint8)
    images, boxes = compose(backgrounds, items, np.array([[2, 3]]), np.array([10]),
                            item_colors=np.array([[255, 0, 0]], np.uint8))
    assert np.array_equal(images, backgrounds)
    assert np.array_equal(boxes, np.zeros((1, 4), np.float32))


def test_compose_rejects_item_outside_canvas():
    with pytest.raises(ValueError, match="inside the 16x16 canvas"):
        compose(np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), np.array([[10, 10]]),
                np.array([8]))


def test_item_size_for_patch_share():
    assert item_size_for_patch_share(0.0625, 112) == 28
    assert item_size_for_patch_share(1.0, 64) == 64
    with pytest.raises(ValueError, match="patch_share"):
        item_size_for_patch_share(0.0, 64)


def test_compose_cifar_items_on_textures(shared_data):
    from maskkit.data.wds import WebDatasetIndex

    index = WebDatasetIndex(str(shared_data / "cifar10" / "test-000000.tar"), image_size=32)
    items = np.stack([index[i]["image"].permute(1, 2, 0).numpy() for i in range(4)])
    rng = np.random.default_rng(1)
    size = item_size_for_patch_share(0.1, 112)
    top_left, sizes = sample_placements(4, 112, (size, size), rng)
    textures = EmbeddedDataset("test").arrays["textures"]
    gray = crop_backgrounds(textures, np.array([0, 1, 2, 0]), np.zeros((4, 2), np.int64), np.arange(4), 112)
    backgrounds = tint(gray, sample_color_pairs(4, rng)[1])
    images, boxes = compose(backgrounds, items, top_left, sizes)
    assert images.shape == (4, 112, 112, 3)
    expected = np.stack([top_left[:, 1], top_left[:, 0], top_left[:, 1] + sizes, top_left[:, 0] + sizes], 1) / 112
    assert np.allclose(boxes, expected)
