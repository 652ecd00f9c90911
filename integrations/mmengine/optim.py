"""Optimizer parameter groups and learning-rate schedule for maskkit runs.

Config snippet (AdamW, no weight decay on biases, norms, 1-D parameters and
the logit scale; gradient clipping; linear warm-up into cosine decay)::

    optim_wrapper = dict(
        type="OptimWrapper",
        constructor="MaskKitOptimWrapperConstructor",
        optimizer=dict(type="AdamW", lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5),
        clip_grad=dict(max_norm=1.0),   # optional; MMEngine's OptimWrapper clips before each step
        accumulative_counts=1,
    )
    param_scheduler = warmup_cosine_schedule(warmup_iters=50, max_iters=1000, eta_min=1e-5)
"""

from __future__ import annotations

import logging

import torch
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS

from .registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ["no_weight_decay", "weight_decay_groups", "MaskKitOptimWrapperConstructor", "warmup_cosine_schedule"]

logger = logging.getLogger(__name__)


def no_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Return whether a parameter is exempt from weight decay: biases, norms, 1-D or scalar tensors, logit scales."""
    return parameter.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in {"logit_scale", "logit_bias"}


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters of ``model`` into a decayed and an undecayed group.

    Frozen parameters (``requires_grad=False``) are left out, so the optimizer
    keeps no state for them. Shared parameters appear once.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``,
        without empty groups.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, exempt = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (exempt if no_weight_decay(name, parameter) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": exempt, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class MaskKitOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Build an optimizer wrapper whose optimizer gets :func:`weight_decay_groups`.

    Takes the usual ``optim_wrapper`` config; ``optimizer.weight_decay`` is the
    decay of the decayed group. ``paramwise_cfg`` is not supported, because the
    grouping rule replaces it.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        if paramwise_cfg:
            raise ValueError(f"MaskKitOptimWrapperConstructor does not take paramwise_cfg, got {paramwise_cfg!r}; "
                             "it sets weight decay per parameter itself")
        super().__init__(optim_wrapper_cfg, None)

    def __call__(self, model: torch.nn.Module):
        if hasattr(model, "module"):
            model = model.module
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer_cfg = self.optimizer_cfg.copy()
        groups = weight_decay_groups(model, float(optimizer_cfg.get("weight_decay", 0.0)))
        optimizer_cfg["params"] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        counts = [sum(p.numel() for p in group["params"]) for group in groups]
        logger.info("optimizer groups: %s parameters", " / ".join(
            f"{count} with weight_decay={group['weight_decay']}" for count, group in zip(counts, groups)))
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))


def warmup_cosine_schedule(warmup_iters: int, max_iters: int, eta_min: float = 0.0,
                           start_factor: float = 1e-3) -> list[dict]:
    """``param_scheduler`` entries: linear warm-up from ``start_factor * lr``, then cosine to ``eta_min``.

    Both schedulers count iterations (``by_epoch=False``). ``warmup_iters=0`` gives cosine only.
    """
    if not 0 <= warmup_iters < max_iters:
        raise ValueError(f"warmup_iters must be in [0, max_iters={max_iters}), got {warmup_iters}")
    if not 0 < start_factor <= 1:
        raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
    schedule = []
    if warmup_iters > 0:
        schedule.append(dict(type="LinearLR", start_factor=start_factor, by_epoch=False, begin=0, end=warmup_iters))
    schedule.append(dict(type="CosineAnnealingLR", T_max=max_iters - warmup_iters, eta_min=eta_min,
                         by_epoch=False, begin=warmup_iters, end=max_iters))
    return schedule
