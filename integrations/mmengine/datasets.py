"""maskkit's data readers registered for MMEngine configs, and their collate function.

Every reader is map-style, as MMEngine's samplers require: webdataset shards go
through ``WebDatasetImageText``, an index over the tar members. Use them with
``collate_fn=dict(type="maskkit_collate", tokenizer="ViT-B-16", context_length=16)``.

``metainfo`` (which MMEngine hands to metrics as ``dataset_meta``) carries
``classes`` and ``templates`` when known, for zero-shot evaluation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import torch

from maskkit.data.csv import CsvImageTextDataset
from maskkit.data.embedded import EMBEDDED_CLASSNAMES, EMBEDDED_TEMPLATES, EmbeddedDataset
from maskkit.data.samples import Collator
from maskkit.data.wds import WebDatasetIndex

from mmengine.registry import FUNCTIONS as ROOT_FUNCTIONS

from .registry import DATASETS, FUNCTIONS

__all__ = ["EmbeddedImageText", "CsvImageText", "WebDatasetImageText", "maskkit_collate", "get_cached_tokenizer"]


class _Metainfo:
    """Mixin adding MMEngine's ``metainfo`` and an optional ``num_samples`` cut to a reader."""

    def _setup_meta(self, num_samples: int | None, classes: Sequence[str] | None,
                    templates: Sequence[str] | None) -> None:
        full = super().__len__()
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
        self._length = full if num_samples is None else min(num_samples, full)
        self._metainfo = {}
        if classes is not None:
            self._metainfo["classes"] = tuple(classes)
        if templates is not None:
            self._metainfo["templates"] = tuple(templates)

    @property
    def metainfo(self) -> dict:
        return dict(self._metainfo)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} samples")
        return super().__getitem__(index % self._length)


class EmbeddedImageText(_Metainfo, EmbeddedDataset):
    """The embedded Fashion-MNIST-on-texture set (``split`` "train" or "test"), with class names and templates.

    Args:
        split, image_size: see ``maskkit.data.embedded.EmbeddedDataset``.
        num_samples: keep only the first N samples (for short runs and tests).
    """

    def __init__(self, split: str = "train", image_size: int = 112, num_samples: int | None = None):
        super().__init__(split=split, image_size=image_size)
        self._setup_meta(num_samples, EMBEDDED_CLASSNAMES, EMBEDDED_TEMPLATES)


class CsvImageText(_Metainfo, CsvImageTextDataset):
    """Image-text pairs from a CSV/TSV file (see ``maskkit.data.csv.CsvImageTextDataset``).

    Args:
        classes, templates: class names and prompt templates for zero-shot metrics, when the
            file has a label column.
        num_samples: keep only the first N rows.
    """

    def __init__(self, path: str, classes: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                 num_samples: int | None = None, **kwargs: Any):
        super().__init__(path, **kwargs)
        self._setup_meta(num_samples, classes, templates)


class WebDatasetImageText(_Metainfo, WebDatasetIndex):
    """Map-style index over uncompressed webdataset shards (see ``maskkit.data.wds.WebDatasetIndex``).

    Args:
        urls: shard paths or brace patterns.
        classes, templates: for zero-shot metrics when samples carry a ``cls`` member.
        num_samples: keep only the first N samples.
    """

    def __init__(self, urls: str | Sequence[str], image_size: int = 224, classes: Sequence[str] | None = None,
                 templates: Sequence[str] | None = None, num_samples: int | None = None):
        super().__init__(urls, image_size=image_size)
        self._setup_meta(num_samples, classes, templates)


for _cls in (EmbeddedImageText, CsvImageText, WebDatasetImageText):
    DATASETS.register_module(module=_cls, force=True)


@lru_cache(maxsize=8)
def get_cached_tokenizer(name: str, context_length: int | None) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer for ``name``, built once per process."""
    from maskkit.data.tokenizer import get_tokenizer

    return get_tokenizer(name, context_length=context_length)


def maskkit_collate(samples: Sequence[Any], tokenizer: str = "ViT-B-16", context_length: int | None = None) -> dict:
    """Collate reader samples into a batch dict (``maskkit.data.samples.Collator``), tokenizing captions.

    Args:
        samples: sample dicts or ``SkippedSample`` markers, which are dropped and counted.
        tokenizer: open_clip model name whose tokenizer to use.
        context_length: token length T of ``texts``; must match the model's text context.
    """
    return Collator(get_cached_tokenizer(tokenizer, context_length))(samples)


# MMEngine's build_dataloader calls FUNCTIONS.get on the root registry, which does not search children.
FUNCTIONS.register_module(name="maskkit_collate", module=maskkit_collate, force=True)
ROOT_FUNCTIONS.register_module(name="maskkit_collate", module=maskkit_collate, force=True)
