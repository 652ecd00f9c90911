"""Cluttered-object data for the accuracy benchmark: real items pasted small on real textures.

Items are Fashion-MNIST clothes (gray, pasted in a random colour) or CIFAR-10 photos (pasted
opaque), resized to 28-40 px on a 112 px window of scikit-image's CC0 ``brick``, ``grass`` or
``gravel`` texture in a random tint. With 14 px patches (an 8 x 8 grid) the item covers 6-13 % of
the canvas, so most patches show only background. Train and test take their items from the
sources' own train and test files and their backgrounds from disjoint regions of the textures
(rows and columns 0-255 for train, 320-511 for test), so no background pixel is shared.
Captions follow the embedded set's templates ("a cat on a grass background.").
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from maskkit.data.build_embedded import SPLITS, build_split, load_textures, read_idx
from maskkit.data.compose import render_arrays
from maskkit.data.embedded import CANVAS_SIZE, CAPTION_TEMPLATES, EMBEDDED_CLASSNAMES, TEXTURE_NAMES, with_article

CIFAR10_CLASSNAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASSNAMES = {"fashion_mnist": EMBEDDED_CLASSNAMES, "cifar10": CIFAR10_CLASSNAMES}


def read_fashion_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Items (n, 28, 28) uint8 and labels (n,) from the IDX files in ``root``."""
    prefix = SPLITS[split]["prefix"]
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels


def read_cifar10(root: Path, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Items (n, 32, 32, 3) uint8 and labels (n,) from the webdataset shards ``{split}-*.tar`` in ``root``.

    Reads shards in name order until every class has ``per_class`` decoded samples (or the shards end).
    """
    from PIL import Image

    shards = sorted(root.glob(f"{split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no CIFAR-10 shards named {split}-*.tar in {root}")
    images, labels = [], []
    counts = np.zeros(len(CIFAR10_CLASSNAMES), np.int64)
    for shard in shards:
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as archive:
            for member in archive:
                key, _, suffix = member.name.partition(".")
                pending.setdefault(key, {})[suffix] = archive.extractfile(member).read()
                sample = pending[key]
                if "jpg" in sample and "cls" in sample:
                    images.append(np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")))
                    labels.append(int(sample["cls"]))
                    counts[labels[-1]] += 1
                    del pending[key]
                    if counts.min() >= per_class:
                        return np.stack(images), np.asarray(labels, np.uint8)
    return np.stack(images), np.asarray(labels, np.uint8)


class ClutterSet:
    """A rendered-on-demand cluttered-object set of ``10 * per_class`` samples.

    ``render(indices)`` returns images (n, 3, 112, 112) uint8 and item boxes (n, 4) normalised xyxy;
    ``labels``, ``texture_index`` and ``caption_templates`` give the caption parts of each sample.
    """

    def __init__(self, source: str, data_root: Path, split: str, per_class: int, seed: int):
        if source not in CLASSNAMES:
            raise ValueError(f"source must be one of {sorted(CLASSNAMES)}, got {source!r}")
        self.source = source
        self.classnames = CLASSNAMES[source]
        if source == "fashion_mnist":
            items, labels = read_fashion_mnist(Path(data_root) / "fashion-mnist", split)
        else:
            items, labels = read_cifar10(Path(data_root) / "cifar10", split, per_class)
        counts = np.bincount(labels, minlength=10)
        if counts.min() < per_class:
            raise ValueError(f"{source} {split} has only {counts.min()} items in its smallest class; "
                             f"per_class={per_class} is too many")
        # Offset the seed per split, so the test draw never repeats the train draw.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        self.arrays = build_split(items, labels, load_textures(), per_class, SPLITS[split]["region"], rng)
        self.labels = self.arrays["labels"].astype(np.int64)
        self.texture_index = self.arrays["texture_index"].astype(np.int64)
        self.caption_templates = self.arrays["caption_templates"].astype(np.int64)

    def __len__(self) -> int:
        return int(self.labels.size)

    def render(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        images, boxes = render_arrays(self.arrays, indices, CANVAS_SIZE)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(boxes)

    def caption_table(self, tokenizer) -> torch.Tensor:
        """Token ids of every (template, class, texture) caption: (templates, classes, textures, T) long."""
        texts = [CAPTION_TEMPLATES[t].format(item=with_article(name), item_bare=name, background=TEXTURE_NAMES[b])
                 for t in range(len(CAPTION_TEMPLATES)) for name in self.classnames for b in range(len(TEXTURE_NAMES))]
        tokens = tokenizer(texts)
        return tokens.view(len(CAPTION_TEMPLATES), len(self.classnames), len(TEXTURE_NAMES), -1)
