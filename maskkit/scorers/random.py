"""Random scorer: uniform noise, which makes the selector keep a random subset (FLIP)."""

from __future__ import annotations

from typing import Optional

import torch

from maskkit.registry import register_scorer
from maskkit.scorers.base import Scorer, ScoringInputs

__all__ = ["RandomScorer"]


@register_scorer("random")
class RandomScorer(Scorer):
    """Score every patch with U[0, 1) noise drawn on the tokens' device.

    The noise comes from ``inputs.generator`` when given, else from this
    scorer's own ``generator``, else from the global generator of the tokens'
    device, so a seeded generator makes runs repeat exactly.

    Args:
        generator: fallback ``torch.Generator``; it must live on the tokens'
            device.
    """

    requires = frozenset({"tokens"})

    def __init__(self, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.generator = generator

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        """Return (B, N) float32 uniform noise for the (B, N, C) ``inputs.tokens``."""
        tokens = inputs.tokens
        if tokens is None or tokens.dim() != 3:
            shape = None if tokens is None else tuple(tokens.shape)
            raise ValueError(f"RandomScorer needs inputs.tokens of shape (B, N, C), got {shape}")
        generator = inputs.generator if inputs.generator is not None else self.generator
        if generator is not None and generator.device != tokens.device:
            raise ValueError(
                f"generator is on {generator.device} but the tokens are on {tokens.device}; "
                "create the generator on the tokens' device"
            )
        batch, length = tokens.shape[:2]
        return torch.rand(batch, length, generator=generator, device=tokens.device)
