"""The model the launcher hands to open_clip_train: a maskkit method behind open_clip's interface.

:class:`OpenCLIPTrainModule` wraps a :class:`~maskkit.MaskedContrastiveCLIP` so
that open_clip_train's loop, evaluation and checkpointing work unchanged:

- Training ``forward(images, texts)`` runs the method's views, teacher and
  masked tower passes and returns a flat dict of **batch-first** tensors
  (per-view features, pooled features, teacher targets, per-sample shares of
  scalar losses) plus ``logit_scale``. The objectives run later, in
  :class:`~maskkit.integrations.open_clip.loss.MaskedCLIPLoss`, so with
  ``--accum-freq N`` they see the features of all N micro-batches.
- Each micro-batch gets its own seed for views and masks. open_clip_train runs
  every micro-batch twice under ``--accum-freq N`` (a no-gradient caching pass,
  then a gradient pass in the same order), so the gradient passes replay the
  seeds of the caching passes and reproduce their views and masks exactly.
- Eval mode forwards to the plain open_clip model (masked when
  ``eval_keep_ratio`` is set), which is what zero-shot and validation expect.
- ``state_dict()`` is the plain open_clip state dict, under whatever prefix an
  outer wrapper (DDP's ``module.``) adds; the teacher, heads and scorer are
  saved separately through :meth:`maskkit_state`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import nn

__all__ = ["OpenCLIPTrainModule", "HOST_PREFIX", "AUX_LOSS_PREFIX", "flatten_outputs", "unflatten_outputs"]

logger = logging.getLogger(__name__)

# Prefix of the open_clip model's keys inside this module's own parameter tree.
HOST_PREFIX = "method.model."
# Flat output keys holding per-sample shares of a scalar loss term.
AUX_LOSS_PREFIX = "aux_loss."
_NESTED = ("image_features", "pooled", "teacher_outputs")


def flatten_outputs(outputs: Mapping[str, Any], batch_size: int) -> dict[str, torch.Tensor]:
    """Flatten the method's outputs dict into ``{"key.view": (B, ...)}`` plus ``logit_scale``.

    Raises:
        ValueError: a tensor other than ``logit_scale`` is not batch-first with ``batch_size`` rows.
    """
    flat: dict[str, torch.Tensor] = {}
    for key, value in outputs.items():
        if isinstance(value, Mapping):
            for name, tensor in value.items():
                flat[f"{key}.{name}"] = tensor
        else:
            flat[key] = value
    for key, tensor in flat.items():
        if key != "logit_scale" and (tensor.dim() == 0 or tensor.shape[0] != batch_size):
            raise ValueError(f"output {key!r} has shape {tuple(tensor.shape)}; open_clip_train concatenates "
                             f"outputs of micro-batches along dim 0, so it must be batch-first with "
                             f"{batch_size} rows")
    return flat


def unflatten_outputs(flat: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Invert :func:`flatten_outputs`; return (outputs dict, auxiliary loss shares by loss name)."""
    outputs: dict[str, Any] = {key: {} for key in _NESTED}
    auxiliary: dict[str, torch.Tensor] = {}
    for key, tensor in flat.items():
        if key.startswith(AUX_LOSS_PREFIX):
            auxiliary[key[len(AUX_LOSS_PREFIX):]] = tensor
            continue
        head, sep, name = key.partition(".")
        if sep and head in _NESTED:
            outputs[head][name] = tensor
        else:
            outputs[key] = tensor
    return outputs, auxiliary


def _state_dict_post_hook(module: "OpenCLIPTrainModule", state_dict, prefix: str, local_metadata) -> None:
    """Keep only the host model's entries and drop the ``method.model.`` part of their keys."""
    host = prefix + HOST_PREFIX
    items = [(key, state_dict.pop(key)) for key in list(state_dict) if key.startswith(prefix)]
    for key, value in items:
        if key.startswith(host):
            state_dict[prefix + key[len(host):]] = value


def _load_pre_hook(module: "OpenCLIPTrainModule", state_dict, prefix: str, local_metadata, strict,
                   missing_keys, unexpected_keys, error_msgs) -> None:
    """Move plain open_clip keys under ``method.model.`` so the host model receives them."""
    own = prefix + "method."
    for key in [key for key in state_dict if key.startswith(prefix) and not key.startswith(own)]:
        state_dict[prefix + HOST_PREFIX + key[len(prefix):]] = state_dict.pop(key)


def _load_post_hook(module: "OpenCLIPTrainModule", incompatible_keys) -> None:
    """Teacher, heads and scorer come from :meth:`load_maskkit_state`, so their keys are not missing."""
    missing = incompatible_keys.missing_keys
    kept = [key for key in missing if HOST_PREFIX in key or "method." not in key]
    missing[:] = kept


class OpenCLIPTrainModule(nn.Module):
    """A :class:`~maskkit.MaskedContrastiveCLIP` with open_clip's model interface.

    Args:
        method: the composed method; its host model must be an open_clip model.
        seed: seed of the per-micro-batch seeds for views and masks.

    Training forward returns the flat batch-first dict described in the module
    docstring; eval forward returns the host model's own output. Call
    :meth:`on_optimizer_step` once after every optimizer step (the launcher does
    it from an optimizer step post-hook).
    """

    def __init__(self, method: nn.Module, seed: int = 0):
        super().__init__()
        self.method = method
        self._seed_generator = torch.Generator().manual_seed(int(seed))
        self._cached_seeds: list[int] = []
        self._replayed = 0
        self.register_state_dict_post_hook(_state_dict_post_hook)
        self.register_load_state_dict_pre_hook(_load_pre_hook)
        self.register_load_state_dict_post_hook(_load_post_hook)

    # ----- open_clip's model interface ----------------------------------------------------------
    @property
    def host(self) -> nn.Module:
        """The open_clip model being trained."""
        return self.method.model

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.method.model.logit_scale

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Encode normalised images; masked by the selector in eval mode when ``eval_keep_ratio`` is set."""
        return self.method.encode_image(image, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.method.model.encode_text(text, normalize=normalize)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.method.model.set_grad_checkpointing(enable)

    def lock_image_tower(self, *args, **kwargs) -> None:
        self.method.model.lock_image_tower(*args, **kwargs)

    def lock_text_tower(self, *args, **kwargs) -> None:
        self.method.model.lock_text_tower(*args, **kwargs)

    def train(self, mode: bool = True) -> "OpenCLIPTrainModule":
        """Set the mode; also drop seeds cached by an accumulation cycle that an epoch end cut short."""
        self._reset_seeds()
        return super().train(mode)

    # ----- seeds per micro-batch -------------------------------------------------------------------
    def _reset_seeds(self) -> None:
        self._cached_seeds = []
        self._replayed = 0

    def _draw_seed(self) -> int:
        # The seed generator lives on the CPU, so drawing a seed does not wait for the accelerator.
        return int(torch.randint(0, 2**62, (1,), generator=self._seed_generator).item())

    def next_seed(self) -> int:
        """Seed for the next training forward.

        A forward without gradient is a caching pass: it draws a new seed and
        queues it. A forward with gradient replays the queued seeds in order,
        and draws a new one when the queue is spent (``--accum-freq 1``).
        """
        if not torch.is_grad_enabled():
            if self._replayed:  # a new cycle began before the optimizer step of the last one
                self._reset_seeds()
            seed = self._draw_seed()
            self._cached_seeds.append(seed)
            return seed
        if self._replayed < len(self._cached_seeds):
            seed = self._cached_seeds[self._replayed]
            self._replayed += 1
            return seed
        return self._draw_seed()

    def on_optimizer_step(self) -> None:
        """Advance the EMA teacher once and start a new accumulation cycle."""
        self._reset_seeds()
        self.method.update_teacher()

    # ----- forward --------------------------------------------------------------------------------
    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if not self.training or image is None or text is None:
            return self._eval_forward(image, text)

        seed = self.next_seed()
        outputs, _ = self.method.forward_outputs(image, text, seed=seed)
        batch = image.shape[0]
        flat = flatten_outputs(outputs, batch)
        scorer = self.method.scorer
        if scorer is not None:
            for key, value in scorer.auxiliary_loss().items():
                # Per-sample shares: the loss sums them, so micro-batches concatenate like features.
                flat[AUX_LOSS_PREFIX + key] = (value.reshape(1) / batch).expand(batch)
        return flat

    def _eval_forward(self, image: Optional[torch.Tensor], text: Optional[torch.Tensor]) -> dict:
        """Return the output dict of open_clip's ``CLIP.forward(..., output_dict=True)``."""
        host = self.method.model
        out = {"image_features": None if image is None else self.encode_image(image, normalize=True),
               "text_features": None if text is None else self.encode_text(text, normalize=True),
               "logit_scale": host.logit_scale.exp()}
        if getattr(host, "logit_bias", None) is not None:
            out["logit_bias"] = host.logit_bias
        return out

    # ----- checkpoints ----------------------------------------------------------------------------
    def maskkit_state(self) -> dict:
        """maskkit's state for the checkpoint's ``"maskkit"`` entry: tensors and plain values only."""
        return {"method": self.method.extra_state_dict(),
                "seed_generator": self._seed_generator.get_state()}

    def load_maskkit_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`maskkit_state` returned."""
        self.method.load_extra_state_dict(state["method"])
        if "seed_generator" in state:
            self._seed_generator.set_state(state["seed_generator"])
        self._reset_seeds()
