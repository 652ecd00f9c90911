"""The embedded default data set: Fashion-MNIST items pasted on tinted CC0 textures, with captions.

Each 112 x 112 RGB image shows one Fashion-MNIST item at a random position on a window of
scikit-image's ``brick``, ``grass`` or ``gravel`` texture. The item is resized to 28-40 px, which
is 6-13 % of the area, so it touches a minority of the 8 x 8 grid of 14 px patches. Item and background get random colours
at least 150 apart in RGB, so colour is no cue for the class. Train and test use different
Fashion-MNIST files for the items and non-overlapping regions of the textures for the backgrounds.

The package stores only the items, the texture crops and the per-sample parameters (see
``build_embedded.py``); images are composed when read. Licences: ``assets/NOTICE.md``.
"""

from __future__ import annotations

import io
import json
import lzma
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maskkit.data.compose import render_arrays

ASSETS = Path(__file__).resolve().parent / "assets"
ASSET_FILES = {"train": "embedded_train.npy.xz", "test": "embedded_test.npy.xz"}
CANVAS_SIZE = 112
ITEM_SIZE_RANGE = (28, 40)
TEXTURE_NAMES = ("brick", "grass", "gravel")
CAPTIONS_PER_IMAGE = 3

EMBEDDED_CLASSNAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                       "sandal", "shirt", "sneaker", "bag", "ankle boot")

# Zero-shot prompt templates, where ``{}`` is the class name.
EMBEDDED_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a {} on a textured background.",
                      "an image of a small {}.")

# Training caption templates: ``{item}`` is the class name with its article, ``{item_bare}`` the bare
# class name and ``{background}`` the texture name.
CAPTION_TEMPLATES = (
    "a photo of {item}.",
    "{item} on a {background} background.",
    "a picture of {item} lying on {background}.",
    "{item} in front of a {background} texture.",
    "an image of {item}.",
    "a small {item_bare} on {background}.",
)


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def caption(template_index: int, label: int, texture_index: int) -> str:
    """Fill caption template ``template_index`` for class ``label`` on texture ``texture_index``."""
    name = EMBEDDED_CLASSNAMES[label]
    return CAPTION_TEMPLATES[template_index].format(
        item=with_article(name), item_bare=name, background=TEXTURE_NAMES[texture_index])


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an xz-compressed stream: a JSON line of names, then one ``.npy`` record each.

    Deterministic bytes for the same arrays (no timestamps, unlike ``np.savez``).
    """
    buffer = io.BytesIO()
    names = sorted(arrays)
    buffer.write(json.dumps(names).encode("ascii") + b"\n")
    for name in names:
        np.save(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    path.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_arrays`."""
    buffer = io.BytesIO(lzma.decompress(Path(path).read_bytes()))
    names = json.loads(buffer.readline())
    return {name: np.load(buffer, allow_pickle=False) for name in names}


@lru_cache(maxsize=4)
def _load_split(path: str) -> dict[str, np.ndarray]:
    arrays = load_arrays(Path(path))
    for array in arrays.values():
        array.flags.writeable = False  # shared by every dataset object of this split
    return arrays


class EmbeddedDataset(Dataset):
    """Map-style access to the embedded set: 5,000 train or 1,000 test samples, 10 balanced classes.

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: side of the returned images; the 112 px canvas is resized (bilinear, antialiased)
            when it differs. Boxes are normalised, so they do not change.
        assets: folder with the asset files (default: the package's ``assets``).

    ``dataset[i]`` returns ``{"image": uint8 (3, S, S), "text", "key", "label", "box": (4,) xyxy,
    "captions": 3 captions}``. :meth:`render` composes many samples at once.
    """

    def __init__(self, split: str = "train", image_size: int = CANVAS_SIZE, assets: str | Path | None = None):
        if split not in ASSET_FILES:
            raise ValueError(f"split must be one of {sorted(ASSET_FILES)}, got {split!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        path = Path(assets or ASSETS) / ASSET_FILES[split]
        if not path.is_file():
            raise FileNotFoundError(f"embedded data set file not found: {path}; rebuild it with "
                                    "python -m maskkit.data.build_embedded (see docs/data.md)")
        self.split = split
        self.image_size = image_size
        self.arrays = _load_split(str(path))
        self.labels = self.arrays["labels"].astype(np.int64)

    def __len__(self) -> int:
        return int(self.labels.size)

    def render(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Compose samples ``indices``: images (n, 3, S, S) uint8 and boxes (n, 4) float32 normalised xyxy."""
        images, boxes = render_arrays(self.arrays, indices, CANVAS_SIZE)
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if self.image_size != CANVAS_SIZE:
            resized = torch.nn.functional.interpolate(images.float(), size=(self.image_size,) * 2, mode="bilinear",
                                                      align_corners=False, antialias=True)
            images = resized.round().clamp(0, 255).to(torch.uint8)
        return images, torch.from_numpy(boxes)

    def captions(self, index: int) -> list[str]:
        a = self.arrays
        label, texture = int(a["labels"][index]), int(a["texture_index"][index])
        return [caption(int(t), label, texture) for t in a["caption_templates"][index]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        images, boxes = self.render([index])
        captions = self.captions(index)
        return {"image": images[0], "text": captions[0], "key": f"embedded_{self.split}_{index:05d}",
                "label": int(self.labels[index]), "box": boxes[0], "captions": captions}
