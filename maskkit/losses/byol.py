"""BYOL-style cosine regression from online views onto an EMA teacher target.

The online branch maps each view's pooled feature through a projector
(in-hidden-out) and a predictor (out-hidden-out). The target is the EMA
teacher's copy of the projector applied to the teacher view, which the method
passes in as ``outputs["teacher_outputs"]["byol_projector"]``. A-CLIP uses one
teacher view for both online views, weight 2.0, projector 768-4096-256 and
predictor 256-4096-256.

The loss needs no gather across ranks because every sample's term is
independent, so the DDP-averaged gradient equals the single-process one
(except for BatchNorm statistics, which are per device).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.losses._checks import check_non_negative, check_view_names
from maskkit.losses.heads import MLPHead, check_in_dim
from maskkit.losses.outputs import POOLED, TEACHER_OUTPUTS, require_key, require_views
from maskkit.registry import register_objective

__all__ = ["byol_loss", "BYOLObjective", "TEACHER_HEAD"]

TEACHER_HEAD = "byol_projector"


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Compute the batch mean of ``2 - 2 cos(prediction, target)`` with the target detached.

    Args:
        prediction: (B, d) online predictor output.
        target: (B, d) teacher projection of the same images.

    Returns:
        Scalar in [0, 4]; 0 when every prediction points along its target.

    Example:
        >>> float(byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])))
        2.0
    """
    if prediction.dim() != 2 or prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must both be (B, d) of one shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    cosine = (F.normalize(prediction, dim=-1) * F.normalize(target.detach(), dim=-1)).sum(dim=-1)
    return (2 - 2 * cosine).mean()


@register_objective("byol")
class BYOLObjective(nn.Module):
    """Cosine regression of each online view's prediction onto the teacher projection.

    Args:
        views: one or more online view names whose ``outputs["pooled"]``
            features are used.
        in_dim: width of the pooled features (768 for ViT-B/16). Required.
        hidden_dim: hidden width of projector and predictor (4096 in A-CLIP).
        out_dim: projection width (256 in A-CLIP).
        weight: factor applied after averaging over views (2.0 in A-CLIP).
        norm: ``"batch"`` or ``"layer"``, see :mod:`maskkit.losses.heads`.

    Reads ``outputs["pooled"][view]`` and ``outputs["teacher_outputs"]["byol_projector"]``
    and returns ``{"loss_byol": weight * mean_v byol_loss(predictor(projector(pooled[v])), target)}``.
    The EMA teacher must hold a copy of :meth:`ema_heads` and fill the target.
    """

    def __init__(self, views: Sequence[str] = ("view1", "view2"), in_dim: int | None = None,
                 hidden_dim: int = 4096, out_dim: int = 256, weight: float = 2.0, norm: str = "batch"):
        super().__init__()
        self.views = check_view_names(views)
        self.weight = check_non_negative("weight", weight)
        in_dim = check_in_dim(in_dim, "byol")
        self.projector = MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, norm=norm)
        self.predictor = MLPHead(out_dim, hidden_dim, out_dim, num_layers=2, norm=norm)

    def required_views(self) -> tuple[str, ...]:
        """Names of the online views whose pooled features this objective reads."""
        return self.views

    def ema_heads(self) -> dict[str, nn.Module]:
        """Modules the EMA teacher must copy: the projector, under the key the target is read from."""
        return {TEACHER_HEAD: self.projector}

    def forward(self, outputs) -> dict[str, torch.Tensor]:
        pooled = require_views(outputs, POOLED, self.views, "byol")
        teacher_outputs = require_key(outputs, TEACHER_OUTPUTS, "byol")
        if TEACHER_HEAD not in teacher_outputs:
            raise KeyError(
                f"byol objective needs outputs['teacher_outputs'][{TEACHER_HEAD!r}], which is missing. "
                f"Teacher heads present: {sorted(teacher_outputs)}"
            )
        target = teacher_outputs[TEACHER_HEAD]

        total = None
        for view in self.views:
            prediction = self.predictor(self.projector(pooled[view]))
            loss = byol_loss(prediction, target)
            total = loss if total is None else total + loss
        return {"loss_byol": self.weight * total / len(self.views)}

    def extra_repr(self) -> str:
        return f"views={self.views}, weight={self.weight}"
