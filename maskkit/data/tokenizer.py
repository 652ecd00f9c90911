"""Text tokenizer for captions: open_clip's tokenizer for a model name."""

from __future__ import annotations

from typing import Callable

import torch


def get_tokenizer(name: str = "ViT-B-16", context_length: int | None = None) -> Callable[[list[str]], torch.Tensor]:
    """Return open_clip's tokenizer for model ``name``: a callable ``list[str] -> (B, context_length)`` long.

    Works offline for OpenAI-style models, whose byte-pair vocabulary ships inside the open_clip
    wheel. A caption longer than ``context_length`` (default: the model's, 77 for ViT-B-16) is
    truncated and keeps its end-of-text token in the last position, so EOT pooling still works.
    """
    if context_length is not None and (not isinstance(context_length, int) or context_length < 2):
        raise ValueError(f"context_length must be an int >= 2 (start and end tokens) or None, got {context_length!r}")
    try:
        import open_clip
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        raise ImportError("get_tokenizer needs open_clip; install the extra: pip install 'maskkit[open_clip]'") from error
    return open_clip.get_tokenizer(name, context_length=context_length)
