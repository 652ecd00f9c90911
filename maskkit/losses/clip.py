"""Image-text InfoNCE (the CLIP loss), per view, gathered across ranks.

For one view with N = B * world_size gathered pairs and ``s`` the exponentiated
logit scale, the logits are ``s * image @ text.T`` and the loss is the mean of
the image->text and text->image cross-entropies with the matching pair as the
target. ``local_loss=True`` computes only this rank's B rows against all N
columns in both directions (targets offset by ``rank * B``), as open_clip's
``--local-loss`` does. The mean of the local losses over ranks equals the
full-matrix loss, and with ``gather_with_grad=True`` the DDP-averaged gradient
equals the single-process gradient of the whole batch in both modes.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.losses._checks import check_non_negative, check_view_names
from maskkit.losses.distributed import gather_no_grad, gather_with_grad, get_rank
from maskkit.losses.outputs import IMAGE_FEATURES, LOGIT_SCALE, TEXT_FEATURES, require_key, require_views
from maskkit.registry import register_objective

__all__ = ["clip_loss", "CLIPObjective"]


def _gather(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    return gather_with_grad(x) if with_grad else gather_no_grad(x)


def _symmetric_infonce(
    image: torch.Tensor,
    text: torch.Tensor,
    all_image: torch.Tensor,
    all_text: torch.Tensor,
    logit_scale: torch.Tensor,
    local_loss: bool,
) -> torch.Tensor:
    if local_loss:
        offset = get_rank() * image.shape[0]
        targets = torch.arange(image.shape[0], device=image.device) + offset
        logits_per_image = logit_scale * image @ all_text.T
        logits_per_text = logit_scale * text @ all_image.T
    else:
        targets = torch.arange(all_image.shape[0], device=image.device)
        logits_per_image = logit_scale * all_image @ all_text.T
        logits_per_text = logits_per_image.T
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """Compute the symmetric image-text InfoNCE loss of one view.

    Args:
        image_features: (B, D) L2-normalised image embeddings of this rank.
        text_features: (B, D) L2-normalised text embeddings. Row i is the
            caption of image i.
        logit_scale: scalar tensor, already exponentiated.
        local_loss: compute this rank's rows against all gathered columns
            instead of the full matrix on every rank.
        gather_with_grad: gather with a gradient path to every rank.

    Returns:
        Scalar loss. Without a process group both modes give the full-matrix
        loss.

    Example:
        >>> features = F.normalize(torch.eye(4), dim=-1)
        >>> float(clip_loss(features, features, torch.tensor(100.0))) < 1e-6
        True
    """
    _check_pair(image_features, text_features)
    all_image = _gather(image_features, gather_with_grad)
    all_text = _gather(text_features, gather_with_grad)
    return _symmetric_infonce(image_features, text_features, all_image, all_text, logit_scale, local_loss)


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor, view: str = "") -> None:
    where = f" of view {view!r}" if view else ""
    if image_features.dim() != 2 or text_features.dim() != 2:
        raise ValueError(
            f"image and text features must be (B, D), got image{where} {tuple(image_features.shape)} "
            f"and text {tuple(text_features.shape)}"
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image features{where} {tuple(image_features.shape)} and text features "
            f"{tuple(text_features.shape)} must have the same shape"
        )


def _check_view_weights(views) -> dict[str, float]:
    if not isinstance(views, Mapping) or not views:
        raise ValueError(f"views must be a non-empty dict view name -> weight, got {views!r}")
    check_view_names(list(views))
    return {name: check_non_negative(f"weight of view {name!r}", weight) for name, weight in views.items()}


@register_objective("clip")
class CLIPObjective(nn.Module):
    """Weighted sum over views of the image-text InfoNCE loss.

    Args:
        views: view name -> weight. A-CLIP uses ``{"view1": 0.5, "view2": 0.5}``,
            and CLIP and FLIP use one view at 1.0.
        local_loss: see :func:`clip_loss`.
        gather_with_grad: see :func:`clip_loss`. With False, other ranks' rows
            are constants. Without ``local_loss`` the DDP-averaged gradient of
            the feature path is then ``1 / world_size`` of the single-process
            gradient, while the logit scale keeps its full gradient. With
            ``local_loss`` the cross-rank terms of the gradient are lost.

    Reads ``outputs["image_features"][view]``, ``outputs["text_features"]`` and
    ``outputs["logit_scale"]`` (see :mod:`maskkit.losses.outputs`) and returns
    ``{"loss_clip": sum_v weight_v * loss_v}``.
    """

    def __init__(self, views: Mapping[str, float] | None = None, local_loss: bool = False,
                 gather_with_grad: bool = True):
        super().__init__()
        self.views = _check_view_weights({"view1": 1.0} if views is None else views)
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)

    def required_views(self) -> tuple[str, ...]:
        """Names of the views whose image features this objective reads."""
        return tuple(self.views)

    def forward(self, outputs: Mapping) -> dict[str, torch.Tensor]:
        image_features = require_views(outputs, IMAGE_FEATURES, self.views, "clip")
        text_features = require_key(outputs, TEXT_FEATURES, "clip")
        logit_scale = require_key(outputs, LOGIT_SCALE, "clip")
        if not torch.is_tensor(logit_scale) or logit_scale.numel() != 1:
            raise ValueError(f"clip objective expects outputs['logit_scale'] to be a scalar tensor, got {logit_scale!r}")

        all_text = _gather(text_features, self.gather_with_grad)
        total = None
        for view, weight in self.views.items():
            image = image_features[view]
            _check_pair(image, text_features, view)
            all_image = _gather(image, self.gather_with_grad)
            loss = _symmetric_infonce(image, text_features, all_image, all_text, logit_scale, self.local_loss)
            total = weight * loss if total is None else total + weight * loss
        return {"loss_clip": total}

    def extra_repr(self) -> str:
        return f"views={self.views}, local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}"
