"""Keys of the ``outputs`` dict that objectives read, and their validation.

The composed method fills one dict per step and passes it to every objective.
An objective reads only the keys it needs:

``"image_features"``
    dict view name -> (B, D) L2-normalised image embeddings, after the image
    projection.
``"text_features"``
    (B, D) L2-normalised text embeddings of the batch's captions.
``"logit_scale"``
    scalar tensor, already exponentiated as in open_clip. The method clamps
    the learnable parameter at ln(100) before exponentiating.
``"pooled"``
    dict view name -> (B, width) pooled image features before the image
    projection. MLP heads take these as input, as SLIP and A-CLIP do with the
    768-d ViT-B/16 feature.
``"teacher_outputs"``
    dict head name -> (B, d) outputs of the EMA teacher's copies of the heads
    that objectives expose through ``ema_heads()``. For example,
    ``"byol_projector"`` contains the teacher projector applied to the teacher
    view's pooled feature.

An objective returns a dict whose ``loss_*`` entries are already weighted and
sum to its share of the total loss, plus detached statistics under keys
without "loss" in the name.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = [
    "IMAGE_FEATURES",
    "TEXT_FEATURES",
    "LOGIT_SCALE",
    "POOLED",
    "TEACHER_OUTPUTS",
    "require_key",
    "require_views",
]

IMAGE_FEATURES = "image_features"
TEXT_FEATURES = "text_features"
LOGIT_SCALE = "logit_scale"
POOLED = "pooled"
TEACHER_OUTPUTS = "teacher_outputs"


def require_key(outputs: Mapping[str, Any], key: str, objective: str) -> Any:
    """Return ``outputs[key]`` or raise a KeyError naming the objective and the keys present."""
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{objective} objective expects a dict of outputs, got {type(outputs).__name__}")
    if key not in outputs:
        raise KeyError(
            f"{objective} objective needs outputs[{key!r}], which is missing. "
            f"Keys present: {sorted(outputs)}"
        )
    return outputs[key]


def require_views(
    outputs: Mapping[str, Any], key: str, views, objective: str
) -> dict[str, torch.Tensor]:
    """Return ``{view: outputs[key][view]}`` for ``views``, each a 2-D tensor of one batch size.

    Raises:
        KeyError: ``key`` or some of ``views`` are missing. The message lists
            the missing and the available view names.
        ValueError: a tensor is not 2-D or the batch sizes differ.
    """
    per_view = require_key(outputs, key, objective)
    if not isinstance(per_view, Mapping):
        raise TypeError(
            f"{objective} objective expects outputs[{key!r}] to be a dict view name -> tensor, "
            f"got {type(per_view).__name__}"
        )
    missing = [view for view in views if view not in per_view]
    if missing:
        raise KeyError(
            f"{objective} objective needs views {missing} in outputs[{key!r}], which are missing. "
            f"Views present: {sorted(per_view)}"
        )
    selected = {view: per_view[view] for view in views}
    for view, tensor in selected.items():
        if tensor.dim() != 2:
            raise ValueError(
                f"{objective} objective expects outputs[{key!r}][{view!r}] of shape (B, D), "
                f"got shape {tuple(tensor.shape)}"
            )
    sizes = {view: tensor.shape[0] for view, tensor in selected.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{objective} objective got views of different batch sizes in outputs[{key!r}]: {sizes}")
    return selected
