"""Image-text data: CSV and webdataset readers, the tokenizer, collation and the embedded default set.

Names are imported lazily so ``import maskkit.data`` does not import Pillow, webdataset or open_clip.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CsvImageTextDataset": "maskkit.data.csv",
    "WebDatasetStream": "maskkit.data.wds",
    "WebDatasetIndex": "maskkit.data.wds",
    "expand_urls": "maskkit.data.wds",
    "get_tokenizer": "maskkit.data.tokenizer",
    "Collator": "maskkit.data.samples",
    "collate_image_text": "maskkit.data.samples",
    "SkipCounter": "maskkit.data.samples",
    "SkippedSample": "maskkit.data.samples",
    "resize_center_crop": "maskkit.data.samples",
    "EmbeddedDataset": "maskkit.data.embedded",
    "EMBEDDED_CLASSNAMES": "maskkit.data.embedded",
    "EMBEDDED_TEMPLATES": "maskkit.data.embedded",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maskkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
