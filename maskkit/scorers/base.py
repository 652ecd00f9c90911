"""Scorer contract: what a token scorer receives and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

__all__ = ["ScoringInputs", "Scorer"]


@dataclass
class ScoringInputs:
    """Everything a scorer may look at for one batch.

    Only the fields named in the scorer's ``requires`` are guaranteed to be set.

    Attributes:
        grid: ``(h, w)`` patch grid of the view being masked; N = h * w.
        generator: random generator on the data's device, or None for the
            global one.
        teacher_view: (B, 3, H_t, W_t) normalised teacher-view images.
        tokens: (B, N, C) patch tokens the selector sees (after position
            embedding, prefix tokens removed).
        text_features: (B, D) text embeddings of the batch's captions.
        view_box: (B, 4) xyxy box of the masked view in source coordinates.
        teacher_box: (B, 4) xyxy box of the teacher view in source coordinates.
        flipped: (B,) bool, True where the masked view is mirrored.
    """

    grid: tuple[int, int]
    generator: Optional[torch.Generator] = None
    teacher_view: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    text_features: Optional[torch.Tensor] = None
    view_box: Optional[torch.Tensor] = None
    teacher_box: Optional[torch.Tensor] = None
    flipped: Optional[torch.Tensor] = None


class Scorer(nn.Module):
    """Base class of token scorers.

    Subclasses set ``requires`` (a subset of ``{"teacher_view", "tokens", "text"}``)
    and implement :meth:`score`, returning finite (B, N) scores where higher
    means more worth keeping. Scorers whose ``requires`` is ``{"tokens"}`` run
    inside the :class:`~maskkit.TokenSelector`; the others run before the
    student forward and hand their scores to the selector through
    ``selector.use_scores``.
    """

    requires: frozenset[str] = frozenset()

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: ScoringInputs) -> torch.Tensor:
        return self.score(inputs)

    def token_gate(self, scores: torch.Tensor) -> Optional[torch.Tensor]:
        """Multiplier (B, N) applied to the kept tokens, or None.

        A trainable scorer returns a tensor whose value is exactly 1 but whose
        gradient reaches its parameters (a straight-through estimator), so
        the main loss trains it through the selector.
        """
        return None

    def auxiliary_loss(self) -> dict[str, torch.Tensor]:
        """Weighted ``loss_*`` terms the scorer adds to the step (default none)."""
        return {}
