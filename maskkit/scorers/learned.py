"""Learned scorer: a small MLP on the patch tokens that reach the selector."""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.registry import register_scorer
from maskkit.scorers.base import Scorer, ScoringInputs

__all__ = ["LearnedScorer"]

logger = logging.getLogger(__name__)


@register_scorer("learned")
class LearnedScorer(Scorer):
    """Predict a score per patch with LayerNorm -> Linear -> GELU -> Linear(1).

    Two training signals, usable together:

    * distillation: :meth:`set_target` stores another scorer's (B, N) scores
      for the next :meth:`score` call, and :meth:`auxiliary_loss` returns
      ``distill_weight * KL(softmax(target / T) || softmax(pred / T))``,
      averaged over the batch and over the views scored since the last call.
      Its minimiser is ``pred = target + const``, so the ranking is learned
      whatever the scale of the target; ``T`` only sets how hard it pulls.
    * straight-through: :meth:`token_gate` returns a gate equal to 1 in value
      whose gradient reaches the MLP, so the main loss trains it through the
      selector.

    The input tokens are detached: the scorer trains only its own parameters.
    Its parameters belong to its owner (the method), never to the host model.

    Args:
        dim: token width C. With None the MLP is created at the first
            :meth:`score` call on the tokens' device; the owner must then run
            one forward (or call :meth:`materialize`) before building the
            optimizer or the DDP wrapper.
        hidden_dim: MLP hidden width.
        distill_weight: weight of the distillation term.
        temperature: T of the distillation softmax.
    """

    requires = frozenset({"tokens"})

    def __init__(self, dim: Optional[int] = None, hidden_dim: int = 64, distill_weight: float = 1.0,
                 temperature: float = 1.0):
        super().__init__()
        for name, value in (("hidden_dim", hidden_dim),) + ((("dim", dim),) if dim is not None else ()):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(distill_weight, (int, float)) or distill_weight < 0:
            raise ValueError(f"distill_weight must be a number >= 0, got {distill_weight!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.hidden_dim = hidden_dim
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)
        self.mlp: Optional[nn.Sequential] = None
        self._target: Optional[torch.Tensor] = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if dim is not None:
            self.materialize(dim)

    @property
    def dim(self) -> Optional[int]:
        """Token width the MLP takes, or None before it is created."""
        return None if self.mlp is None else self.mlp[0].normalized_shape[0]

    def materialize(self, dim: int, device=None, dtype=None) -> None:
        """Create the MLP for tokens of width ``dim`` (no-op if it exists with that width)."""
        if self.mlp is not None:
            if self.dim != dim:
                raise ValueError(f"LearnedScorer was built for tokens of width {self.dim}, got {dim}")
            return
        options = dict(device=device, dtype=dtype)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim, **options),
            nn.Linear(dim, self.hidden_dim, **options),
            nn.GELU(),
            nn.Linear(self.hidden_dim, 1, **options),
        )

    def set_target(self, scores: torch.Tensor) -> None:
        """Store (B, N) target scores for the next :meth:`score` call (detached)."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"target scores must be a (B, N) tensor, got {shape}")
        self._target = scores.detach()

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        """Return (B, N) float32 predicted scores for the (B, N, C) ``inputs.tokens``."""
        tokens = inputs.tokens
        if tokens is None or tokens.dim() != 3:
            shape = None if tokens is None else tuple(tokens.shape)
            raise ValueError(f"LearnedScorer needs inputs.tokens of shape (B, N, C), got {shape}")
        if self.mlp is None:
            logger.warning("LearnedScorer created its MLP lazily for width %d; parameters created after the "
                           "optimizer was built are not trained", tokens.shape[-1])
            self.materialize(tokens.shape[-1], device=tokens.device)
        weight = self.mlp[1].weight
        pred = self.mlp(tokens.detach().to(weight.dtype)).squeeze(-1).float()
        if self._target is not None:
            if self._target.shape != pred.shape:
                raise ValueError(f"target scores have shape {tuple(self._target.shape)} but the scorer "
                                 f"predicted {tuple(pred.shape)}")
            self._pairs.append((self._target, pred))
            self._target = None
        return pred

    def token_gate(self, scores: torch.Tensor) -> torch.Tensor:
        """Return a (B, N) gate exactly 1 in value whose gradient is that of sigmoid(scores)."""
        prob = torch.sigmoid(scores)
        # (p - p.detach()) is exactly zero, so adding 1 afterwards gives exactly 1.
        return (prob - prob.detach()) + 1.0

    def auxiliary_loss(self) -> dict[str, torch.Tensor]:
        """Return ``{"loss_scorer_distill": ...}`` over the views scored since the last call, then reset."""
        pairs, self._pairs = self._pairs, []
        if not pairs or self.distill_weight == 0:
            return {}
        losses = []
        for target, pred in pairs:
            log_target = F.log_softmax(target.float() / self.temperature, dim=-1)
            log_pred = F.log_softmax(pred / self.temperature, dim=-1)
            losses.append(F.kl_div(log_pred, log_target, log_target=True, reduction="batchmean"))
        return {"loss_scorer_distill": self.distill_weight * torch.stack(losses).mean()}
