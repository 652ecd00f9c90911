"""Data preprocessor: moves a collated image-text batch to the model's device."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from mmengine.model import BaseDataPreprocessor

from .registry import MODELS

__all__ = ["MaskKitDataPreprocessor"]


@MODELS.register_module(force=True)
class MaskKitDataPreprocessor(BaseDataPreprocessor):
    """Move a batch from ``maskkit.data``'s collate function to the device.

    Input: the collated dict with ``images`` (B, 3, H, W) uint8, ``texts`` (B, T)
    token ids and optionally ``labels`` (B,), ``boxes`` (B, 4) normalised
    ``xyxy``, ``keys``, ``captions`` and ``skipped`` (reason -> count).

    Output: ``{"inputs": {"images", "texts"}, "data_samples": {...}}``, where
    ``data_samples`` keeps every other entry (tensors moved to the device).
    Images stay uint8: the method converts and normalises them on the device,
    which moves 4x fewer bytes than float32.

    Skipped-sample counts of training batches are added up in
    :attr:`skipped_samples` (reason -> count) for the metrics file.
    """

    def __init__(self, non_blocking: bool = True):
        super().__init__(non_blocking=non_blocking)
        self._skipped: Counter[str] = Counter()

    @property
    def skipped_samples(self) -> dict[str, int]:
        """Training samples dropped so far, by reason."""
        return dict(self._skipped)

    def forward(self, data: dict, training: bool = False) -> dict[str, Any]:
        if not isinstance(data, dict) or "images" not in data or "texts" not in data:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"MaskKitDataPreprocessor expects the dict from maskkit.data's collate function with "
                f"'images' and 'texts', got {found}; set collate_fn=dict(type='maskkit_collate') "
                "in the dataloader config"
            )
        if training:
            self._skipped.update({reason: int(count) for reason, count in (data.get("skipped") or {}).items()})
        moved = self.cast_data(data)
        images = moved.pop("images")
        texts = moved.pop("texts")
        if isinstance(texts, torch.Tensor) and texts.dtype != torch.long:
            texts = texts.long()
        return {"inputs": {"images": images, "texts": texts}, "data_samples": moved}
