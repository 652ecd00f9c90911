"""Sample decoding, resizing, skip accounting and batch collation shared by every reader.

A sample is a dict with ``"image"`` (uint8 tensor (3, H, W)), ``"text"`` (one caption),
``"key"`` and, when the source provides them, ``"label"`` (int), ``"box"`` (float tensor (4,),
normalised ``xyxy``) and ``"captions"`` (all captions of the image).

Skipping convention: a map-style ``__getitem__`` cannot drop a sample, so every reader returns a
:class:`SkippedSample` marker for a missing or corrupt image or an empty caption, after logging it
with the sample key. :class:`Collator` drops the markers and reports the per-batch counts under
``batch["skipped"]``. Counts made inside DataLoader worker processes therefore reach the main
process with the batches, where a :class:`SkipCounter` adds them up for ``skipped_samples``.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

SKIP_REASONS = ("missing_image", "corrupt_image", "empty_caption")


@dataclass(frozen=True)
class SkippedSample:
    """Marker a reader returns in place of a sample it could not use."""

    key: str
    reason: str  # one of SKIP_REASONS


class SkipCounter:
    """Running totals of skipped samples by reason (``missing_image``, ``corrupt_image``, ...)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, count: int = 1) -> None:
        self._counts[reason] += int(count)

    def update(self, counts: Mapping[str, int] | "SkipCounter") -> None:
        """Add counts from a batch's ``"skipped"`` dict or from another counter."""
        items = counts.skipped if isinstance(counts, SkipCounter) else counts
        for reason, count in items.items():
            self.add(reason, count)

    @property
    def skipped(self) -> dict[str, int]:
        """Totals by reason; reasons never seen are absent."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def __repr__(self) -> str:
        return f"SkipCounter({self.skipped})"


def report_skip(key: str, reason: str, detail: str = "", counter: SkipCounter | None = None) -> SkippedSample:
    """Log one skipped sample, count it in ``counter`` and return its marker."""
    if reason not in SKIP_REASONS:
        raise ValueError(f"reason must be one of {SKIP_REASONS}, got {reason!r}")
    logger.warning("skipping sample %r: %s%s", key, reason, f" ({detail})" if detail else "")
    if counter is not None:
        counter.add(reason)
    return SkippedSample(key, reason)


def resize_center_crop(image, image_size: int) -> torch.Tensor:
    """Resize a PIL image so its short side is ``image_size``, centre-crop it square, return uint8 (3, S, S).

    Resampling is bicubic. Pillow widens the filter when it downscales, so downscaling is antialiased.
    """
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_image(data: bytes, image_size: int) -> torch.Tensor:
    """Decode encoded image bytes (JPEG, PNG, WebP, ...) into a resized uint8 (3, S, S) tensor.

    Raises ``OSError`` or ``ValueError`` (from Pillow) for bytes that are not a complete image.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode fully now so truncated files fail here, not later
        return resize_center_crop(image, image_size)


def check_image_size(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


class Collator:
    """Collate samples into a batch; picklable, so it works as a DataLoader ``collate_fn`` with workers.

    Returns a dict with ``"images"`` (B, 3, H, W) uint8, ``"texts"`` (B, T) long token ids,
    ``"keys"`` (list of str), ``"skipped"`` (dict reason -> count of markers dropped from this
    batch), and ``"labels"`` (B,) long, ``"boxes"`` (B, 4) float and ``"captions"`` (list of
    lists of str) when every kept sample has them. A batch whose samples were all skipped has B = 0.
    A ``None`` sample counts as skipped with reason ``unknown``.

    Args:
        tokenizer: callable mapping a list of B strings to a (B, T) LongTensor (see ``get_tokenizer``).
        counter: optional :class:`SkipCounter` that also accumulates the dropped markers; inside a
            worker process it is the worker's copy, so prefer ``batch["skipped"]`` there.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], counter: SkipCounter | None = None):
        self.tokenizer = tokenizer
        self.counter = counter

    def __call__(self, samples: Iterable[Any]) -> dict[str, Any]:
        kept, skipped = [], Counter()
        for sample in samples:
            if sample is None:
                skipped["unknown"] += 1
            elif isinstance(sample, SkippedSample):
                skipped[sample.reason] += 1
            else:
                kept.append(sample)
        if self.counter is not None:
            self.counter.update(skipped)
        return _stack(kept, self.tokenizer, dict(skipped))


def collate_image_text(samples: Iterable[Any], tokenizer: Callable[[list[str]], torch.Tensor]) -> dict[str, Any]:
    """Functional form of :class:`Collator` (no counter)."""
    return Collator(tokenizer)(samples)


def _stack(samples: list[dict], tokenizer, skipped: dict[str, int]) -> dict[str, Any]:
    if samples:
        images = torch.stack([sample["image"] for sample in samples])
        texts = tokenizer([sample["text"] for sample in samples])
    else:
        images = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        texts = torch.empty(0, 0, dtype=torch.long)
    batch: dict[str, Any] = {
        "images": images,
        "texts": texts,
        "keys": [sample["key"] for sample in samples],
        "skipped": skipped,
    }
    if samples and all("label" in sample for sample in samples):
        batch["labels"] = torch.tensor([int(sample["label"]) for sample in samples], dtype=torch.long)
    if samples and all("box" in sample for sample in samples):
        batch["boxes"] = torch.stack([torch.as_tensor(sample["box"], dtype=torch.float32) for sample in samples])
    if samples and all("captions" in sample for sample in samples):
        batch["captions"] = [list(sample["captions"]) for sample in samples]
    return batch
