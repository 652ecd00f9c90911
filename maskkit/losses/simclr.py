"""NT-Xent (the SimCLR loss) between two augmented views, gathered across ranks.

With N = B * world_size images there are 2N embeddings. Each anchor's positive
is the other view of the same image, and its negatives are the other 2N - 2
embeddings: every view of every other image. An embedding is never compared
with itself. Each rank computes the loss of its own 2B anchors against all 2N
gathered embeddings, so the mean over ranks equals the single-process loss and
the DDP-averaged gradient equals the single-process gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.losses._checks import check_non_negative, check_positive, check_view_names
from maskkit.losses.distributed import gather_with_grad, get_rank
from maskkit.losses.heads import MLPHead, check_in_dim, check_norm
from maskkit.losses.outputs import POOLED, require_views
from maskkit.registry import register_objective

__all__ = ["nt_xent_loss", "SimCLRObjective"]


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute NT-Xent between two views, with negatives gathered across ranks.

    Args:
        z_a: (B, d) embeddings of view a on this rank, L2-normalised here.
        z_b: (B, d) embeddings of view b. Row i is the same image as ``z_a[i]``.
        temperature: divisor of the cosine similarities, > 0.

    Returns:
        ``(loss, accuracy)``: the mean cross-entropy over this rank's 2B
        anchors, and the detached fraction of those anchors whose positive has
        the largest logit.

    Example:
        >>> z = torch.eye(4)
        >>> loss, accuracy = nt_xent_loss(z, z, temperature=0.1)
        >>> float(accuracy)
        1.0
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must both be (B, d) of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")

    q_a = F.normalize(z_a, dim=-1)
    q_b = F.normalize(z_b, dim=-1)
    k_a = gather_with_grad(q_a)
    k_b = gather_with_grad(q_b)

    batch = q_a.shape[0]
    targets = torch.arange(batch, device=q_a.device) + get_rank() * batch
    is_self = torch.arange(k_a.shape[0], device=q_a.device)[None, :] == targets[:, None]

    # Columns: the other view of every image (positives at `targets`), then the
    # same view of every image with the anchor itself masked out.
    logits_a = torch.cat([q_a @ k_b.T, (q_a @ k_a.T).masked_fill(is_self, float("-inf"))], dim=1) / temperature
    logits_b = torch.cat([q_b @ k_a.T, (q_b @ k_b.T).masked_fill(is_self, float("-inf"))], dim=1) / temperature
    loss = (F.cross_entropy(logits_a, targets) + F.cross_entropy(logits_b, targets)) / 2

    with torch.no_grad():
        hits = (logits_a.argmax(dim=1) == targets).float().mean() + (logits_b.argmax(dim=1) == targets).float().mean()
    return loss, hits / 2


@register_objective("simclr")
class SimCLRObjective(nn.Module):
    """NT-Xent between two views' pooled features after a 3-layer MLP head.

    Args:
        views: the two view names whose ``outputs["pooled"]`` features are compared.
        in_dim: width of the pooled features (768 for ViT-B/16). Required.
        hidden_dim: width of the two hidden layers (4096 in SLIP and A-CLIP).
        out_dim: embedding width (256 in SLIP and A-CLIP).
        norm: ``"batch"`` or ``"layer"``, see :mod:`maskkit.losses.heads`.
        temperature: NT-Xent temperature (0.1 in SLIP and A-CLIP).
        weight: factor applied to the loss.

    Returns ``{"loss_simclr": weight * loss, "simclr_acc": accuracy}``, where
    ``simclr_acc`` is the fraction of this rank's anchors whose positive ranks first.
    """

    def __init__(self, views: Sequence[str] = ("view1", "view2"), in_dim: int | None = None,
                 hidden_dim: int = 4096, out_dim: int = 256, norm: str = "batch",
                 temperature: float = 0.1, weight: float = 1.0):
        super().__init__()
        self.views = check_view_names(views, count=2)
        self.temperature = check_positive("temperature", temperature)
        self.weight = check_non_negative("weight", weight)
        self.head = MLPHead(check_in_dim(in_dim, "simclr"), hidden_dim, out_dim, num_layers=3, norm=check_norm(norm))

    def required_views(self) -> tuple[str, ...]:
        """Names of the two views whose pooled features this objective reads."""
        return self.views

    def forward(self, outputs) -> dict[str, torch.Tensor]:
        pooled = require_views(outputs, POOLED, self.views, "simclr")
        view_a, view_b = self.views
        # The head runs once per view, so BatchNorm statistics are per view as in SLIP's released code.
        loss, accuracy = nt_xent_loss(self.head(pooled[view_a]), self.head(pooled[view_b]), self.temperature)
        return {"loss_simclr": self.weight * loss, "simclr_acc": accuracy}

    def extra_repr(self) -> str:
        return f"views={self.views}, temperature={self.temperature}, weight={self.weight}"
