"""The loss the launcher hands to open_clip_train: the method's objectives on batch-first features.

open_clip_train calls ``loss(**model_out, output_dict=True)`` and sums every
returned entry. With ``--accum-freq N`` it first caches every micro-batch's
outputs without gradient, then, for micro-batch j, recomputes its outputs
with gradient and calls the loss on the concatenation of all N micro-batches
(only rows of j carry gradient), calling backward N times before one
optimizer step.

Summed over the N calls, the gradient that reaches the towers through the
features is the gradient of the loss of the whole accumulated batch, as if
it had been one batch. Parameters the loss uses directly (the MLP heads of
SimCLR and BYOL, which run here on the concatenated pooled features, and the
logit scale) would get that gradient N times, once per call. This loss
therefore scales their gradient by 1/N (the value is unchanged), so every
parameter's gradient equals the one of the accumulated batch. Heads with
BatchNorm normalise over the whole accumulated batch, as they would with
one batch of that size.

Scalar per-micro-batch terms (a learned scorer's auxiliary loss) arrive as
per-sample shares; their sum over the N micro-batches divided by N is the mean
of the micro-batch values.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from maskkit.integrations.open_clip.module import OpenCLIPTrainModule, unflatten_outputs

__all__ = ["MaskedCLIPLoss", "scale_grad"]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` unchanged in value, with its gradient multiplied by ``factor`` on the way back."""
    if factor == 1.0:
        return x
    return _ScaleGrad.apply(x, factor)


class MaskedCLIPLoss(nn.Module):
    """Run the method's objectives on the outputs of :class:`OpenCLIPTrainModule`.

    Args:
        module: the training module whose method holds the objectives. It is
            referenced, not registered, so this loss owns no parameters.
        accum_freq: open_clip_train's ``--accum-freq``.
        distill: open_clip's ``DistillClipLoss`` for ``--distill-model``; its
            distillation term compares the teacher's logits with the logits of
            the first view of the CLIP objective.

    Returns ``{"loss_<term>": tensor}`` (open_clip_train sums them all).
    """

    def __init__(self, module: OpenCLIPTrainModule, accum_freq: int = 1, distill: Optional[nn.Module] = None):
        super().__init__()
        if isinstance(accum_freq, bool) or not isinstance(accum_freq, int) or accum_freq < 1:
            raise ValueError(f"accum_freq must be an integer >= 1, got {accum_freq!r}")
        self.__dict__["module"] = module
        self.accum_freq = accum_freq
        self.distill = distill

    def _objective_terms(self, outputs: dict) -> dict[str, torch.Tensor]:
        factor = 1.0 / self.accum_freq
        losses: dict[str, torch.Tensor] = {}
        for objective in self.module.method.objectives.values():
            params = dict(objective.named_parameters())
            if factor != 1.0 and params:
                scaled = {name: scale_grad(param, factor) for name, param in params.items()}
                result = functional_call(objective, scaled, (outputs,), strict=False)
            else:
                result = objective(outputs)
            losses.update({key: value for key, value in result.items() if key.startswith("loss_")})
        return losses

    def _distill_term(self, outputs: dict, dist_image_features, dist_text_features, dist_logit_scale):
        views = self.module.method.objectives["clip"].views if "clip" in self.module.method.objectives else {}
        image = outputs["image_features"][next(iter(views))] if views else next(iter(outputs["image_features"].values()))
        logits_per_image, logits_per_text = self.distill.get_logits(image, outputs["text_features"],
                                                                    outputs["logit_scale"])
        teacher_per_image, teacher_per_text = self.distill.get_logits(dist_image_features, dist_text_features,
                                                                      dist_logit_scale)
        return (self.distill.dist_loss(teacher_per_image, logits_per_image)
                + self.distill.dist_loss(teacher_per_text, logits_per_text)) / 2

    def forward(self, logit_scale: torch.Tensor, output_dict: bool = False, logit_bias=None,
                dist_image_features=None, dist_text_features=None, dist_logit_scale=None, **features):
        outputs, auxiliary = unflatten_outputs(features)
        if "text_features" not in outputs:
            raise KeyError(f"loss inputs have no 'text_features'; got {sorted(features)}. The model must be "
                           "the launcher's OpenCLIPTrainModule in training mode")
        outputs["logit_scale"] = scale_grad(logit_scale, 1.0 / self.accum_freq)
        losses = self._objective_terms(outputs)
        for name, shares in auxiliary.items():
            losses[name] = shares.sum() / self.accum_freq
        if self.distill is not None and dist_image_features is not None:
            losses["loss_distill"] = self._distill_term(outputs, dist_image_features, dist_text_features,
                                                        dist_logit_scale)
        if output_dict:
            return losses
        return tuple(losses.values())
