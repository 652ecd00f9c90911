"""Rebuild the embedded data set's assets from the Fashion-MNIST IDX files and scikit-image textures.

    python -m maskkit.data.build_embedded --fashion-mnist DIR --out maskkit/data/assets --seed 0

The same seed and inputs give byte-identical files. Needs scikit-image (for ``skimage.data``'s
CC0 ``brick``, ``grass`` and ``gravel`` textures, which ship inside its wheel).
"""

from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

import numpy as np

from maskkit.data.compose import sample_color_pairs, sample_placements
from maskkit.data.embedded import (
    ASSET_FILES,
    CANVAS_SIZE,
    CAPTION_TEMPLATES,
    CAPTIONS_PER_IMAGE,
    ITEM_SIZE_RANGE,
    TEXTURE_NAMES,
    save_arrays,
)

logger = logging.getLogger(__name__)

# Per split: Fashion-MNIST file prefix, items per class, and the texture region (rows, cols) of the
# 512 x 512 scikit-image textures. The regions do not overlap, so no background pixel is shared.
SPLITS = {
    "train": {"prefix": "train", "per_class": 500, "region": (slice(0, 256), slice(0, 256))},
    "test": {"prefix": "t10k", "per_class": 100, "region": (slice(320, 512), slice(320, 512))},
}


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file of uint8 values (Fashion-MNIST's format)."""
    data = gzip.decompress(path.read_bytes())
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_textures() -> np.ndarray:
    import skimage.data

    return np.stack([getattr(skimage.data, name)() for name in TEXTURE_NAMES])


def build_split(images: np.ndarray, labels: np.ndarray, textures: np.ndarray, per_class: int,
                region: tuple[slice, slice], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Choose a class-balanced item subset and draw every per-sample composition parameter."""
    chosen = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
                             for c in range(10)])
    chosen = chosen[rng.permutation(chosen.size)]
    n = chosen.size
    crops = np.ascontiguousarray(textures[:, region[0], region[1]])
    top_left, sizes = sample_placements(n, CANVAS_SIZE, ITEM_SIZE_RANGE, rng)
    item_colors, background_colors = sample_color_pairs(n, rng)
    max_offset = np.array(crops.shape[1:]) - CANVAS_SIZE + 1
    # CAPTIONS_PER_IMAGE different templates per sample: the first columns of a random permutation per row.
    captions = rng.random((n, len(CAPTION_TEMPLATES))).argsort(axis=1)[:, :CAPTIONS_PER_IMAGE]
    return {
        "items": images[chosen],
        "labels": labels[chosen].astype(np.uint8),
        "source_index": chosen.astype(np.uint16),
        "textures": crops,
        "texture_index": rng.integers(0, len(TEXTURE_NAMES), n).astype(np.uint8),
        "offsets": (rng.random((n, 2)) * max_offset).astype(np.uint16),
        "orientation": rng.integers(0, 8, n).astype(np.uint8),
        "top_left": top_left.astype(np.uint8),
        "sizes": sizes.astype(np.uint8),
        "item_colors": item_colors,
        "background_colors": background_colors,
        "caption_templates": captions.astype(np.uint8),
        "texture_region": np.array([[region[0].start, region[0].stop], [region[1].start, region[1].stop]], np.uint16),
    }


def build(fashion_mnist: Path, out: Path, seed: int = 0) -> list[Path]:
    """Write the train and test asset files into ``out``; return their paths."""
    rng = np.random.default_rng(seed)
    textures = load_textures()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, spec in SPLITS.items():
        images = read_idx(fashion_mnist / f"{spec['prefix']}-images-idx3-ubyte.gz")
        labels = read_idx(fashion_mnist / f"{spec['prefix']}-labels-idx1-ubyte.gz")
        arrays = build_split(images, labels, textures, spec["per_class"], spec["region"], rng)
        path = out / ASSET_FILES[split]
        save_arrays(path, arrays)
        logger.info("wrote %s: %d samples, %d bytes", path, arrays["labels"].size, path.stat().st_size)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-mnist", type=Path, required=True,
                        help="folder with the four Fashion-MNIST *-ubyte.gz IDX files")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the asset files")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0 gives the shipped assets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.fashion_mnist, args.out, args.seed)


if __name__ == "__main__":
    main()
