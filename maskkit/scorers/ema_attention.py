"""EMA-teacher attention scorer (A-CLIP): CLS-to-patch attention of an unmasked EMA tower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from maskkit.attention import AttentionProbe
from maskkit.ema import EMATeacher
from maskkit.registry import register_scorer
from maskkit.scorers.base import Scorer, ScoringInputs
from maskkit.towers import tower_grid

__all__ = ["TeacherOutput", "EMAAttentionScorer"]


@dataclass
class TeacherOutput:
    """One unmasked teacher pass.

    Attributes:
        scores: (B, N_t) float32 CLS-to-patch attention over the teacher grid.
        grid: ``(h_t, w_t)`` teacher patch grid; N_t = h_t * w_t.
        pooled: (B, width) teacher feature before the image projection (the
            input of the teacher's BYOL projector).
    """

    scores: torch.Tensor
    grid: tuple[int, int]
    pooled: torch.Tensor


@register_scorer("ema_attention")
class EMAAttentionScorer(Scorer):
    """Score patches by the attention an EMA teacher's CLS token pays them on the teacher view.

    Give either ``teacher`` (shared with the method, which updates it) or, for
    standalone use, ``encoder`` and ``total_steps``. In the second case the
    scorer builds its own :class:`~maskkit.EMATeacher`, and the caller must run
    ``scorer.teacher.update(step)`` after each optimizer step.

    Args:
        teacher: an existing EMA teacher.
        layers: blocks whose attention is averaged (see :class:`~maskkit.AttentionProbe`).
        teacher_resolution: teacher input size in pixels (int or ``(h, w)``),
            for example 112 for a 224 px student (A-CLIP-eff); None keeps the
            teacher view's size.
        encoder, total_steps, start_decay: build a teacher from this vision
            tower when ``teacher`` is None.

    Raises:
        ValueError: both or neither of ``teacher`` and ``encoder`` are given,
            or ``total_steps`` is missing for a standalone teacher.
    """

    requires = frozenset({"teacher_view"})

    def __init__(self, teacher: Optional[EMATeacher] = None, layers: str | Sequence[int] = "all",
                 teacher_resolution: int | tuple[int, int] | None = None, encoder: Optional[nn.Module] = None,
                 total_steps: Optional[int] = None, start_decay: float = 0.996):
        super().__init__()
        if (teacher is None) == (encoder is None):
            raise ValueError("give exactly one of teacher (an EMATeacher) and encoder (a vision tower to copy)")
        if teacher is None:
            if total_steps is None:
                raise ValueError("total_steps is required to build a standalone EMA teacher from encoder")
            # A teacher built here belongs to the scorer and is saved with it.
            self.own_teacher = EMATeacher(encoder, total_steps=total_steps, start_decay=start_decay)
            teacher = self.own_teacher
        elif not isinstance(teacher, EMATeacher):
            raise TypeError(f"teacher must be a maskkit.EMATeacher, got {type(teacher).__name__}")
        else:
            self.own_teacher = None
        # A shared teacher is registered by its owner (the composed method); holding it
        # outside _modules keeps it from appearing twice in the owner's state_dict.
        object.__setattr__(self, "_teacher", teacher)
        self.layers = layers
        if teacher_resolution is not None:
            tower_grid(teacher.encoder, teacher_resolution)  # a size that is no multiple of the patch raises here
        self.teacher_resolution = teacher_resolution
        self.probe = AttentionProbe(teacher.encoder, layers=layers)

    @property
    def teacher(self) -> EMATeacher:
        """The EMA teacher whose attention is scored (shared with the method, or the scorer's own)."""
        return self._teacher

    def run_teacher(self, teacher_view: torch.Tensor) -> TeacherOutput:
        """Run the teacher once, unmasked and without gradient, on (B, 3, H, W) ``teacher_view``."""
        if not isinstance(teacher_view, torch.Tensor) or teacher_view.dim() != 4:
            shape = tuple(teacher_view.shape) if isinstance(teacher_view, torch.Tensor) else None
            raise ValueError(f"teacher_view must be a (B, 3, H, W) tensor, got {shape}")
        size = self.teacher_resolution if self.teacher_resolution is not None else tuple(teacher_view.shape[-2:])
        with self.probe.capture():
            pooled = self.teacher(teacher_view, resolution=self.teacher_resolution)
        return TeacherOutput(scores=self.probe.scores(), grid=tower_grid(self.teacher.encoder, size), pooled=pooled)

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        """Return teacher attention resampled onto ``inputs.grid``, (B, N) float32.

        With ``inputs.view_box`` and ``inputs.teacher_box`` the map is warped from
        the teacher box onto the view box (mirrored where ``inputs.flipped``).
        Without them both views are taken to cover the same image region.
        """
        from maskkit.views import warp_scores

        if inputs.teacher_view is None:
            raise ValueError("EMAAttentionScorer needs inputs.teacher_view")
        out = self.run_teacher(inputs.teacher_view)
        grid = tuple(inputs.grid)
        if inputs.view_box is not None and inputs.teacher_box is not None:
            return warp_scores(out.scores, out.grid, inputs.teacher_box, inputs.view_box, grid, flip=inputs.flipped)
        if out.grid == grid:
            return out.scores
        whole = out.scores.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(out.scores.shape[0], 4)
        return warp_scores(out.scores, out.grid, whole, whole, grid)

    def extra_repr(self) -> str:
        return f"layers={self.layers!r}, teacher_resolution={self.teacher_resolution}"
