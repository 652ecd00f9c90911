"""Custom-loop API: one call turns an open_clip model into a masked training method.

Example (a plain PyTorch loop; ``docs/open_clip.md`` has a complete one)::

    model, preprocess, _ = open_clip.create_model_and_transforms("ViT-B-16")
    method = prepare(model, "aclip", total_steps=10_000)
    optimizer = torch.optim.AdamW(method.parameters(), lr=5e-4)
    update_teacher_on_step(method, optimizer)
    for images, texts in loader:          # images from `preprocess`, so normalised
        losses = method(images, texts)
        loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()                  # the hook moves the EMA teacher
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

from torch import nn

__all__ = ["prepare", "update_teacher_on_step", "compile_towers", "DEFAULT_MEAN", "DEFAULT_STD"]

logger = logging.getLogger(__name__)

# open_clip's defaults (OPENAI_DATASET_MEAN / OPENAI_DATASET_STD in open_clip 3.3.0).
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_open_clip_model(model: Any) -> None:
    missing = [name for name in ("visual", "encode_image", "encode_text", "logit_scale") if not hasattr(model, name)]
    if not isinstance(model, nn.Module) or missing:
        raise TypeError(f"model must be an open_clip CLIP or CustomTextCLIP (from create_model_and_transforms), "
                        f"got {type(model).__name__} without {missing}")


def _stats(model: nn.Module, name: str, given: Optional[Sequence[float]], default) -> tuple[float, ...]:
    value = given if given is not None else getattr(model.visual, name, None)
    value = default if value is None else value
    value = tuple(float(item) for item in value)
    if len(value) != 3:
        raise ValueError(f"{name} must hold 3 per-channel values, got {value!r}")
    return value


def prepare(model: nn.Module, preset: str | Mapping[str, Any] = "aclip", *, total_steps: Optional[int] = None,
            input_normalized: bool = True, mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None, **options):
    """Attach a maskkit method to an open_clip model for a custom training loop.

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP`` with a native ViT or a timm
            ViT image tower, random or pretrained. The method takes it over: a
            token selector is attached in its patch-dropout slot, and its
            state-dict keys do not change.
        preset: a preset name (``clip``, ``flip``, ``slip``, ``aclip``,
            ``aclip_eff``, ``attentive``) or a preset dict (``base`` plus keys).
        total_steps: optimizer steps of the run; required when the method has an
            EMA teacher (``aclip``, ``aclip_eff``, ``attentive``).
        input_normalized: True when the loop feeds images normalised with
            ``mean``/``std`` (open_clip's preprocess does); False for uint8 or
            [0, 1] float images.
        mean, std: normalisation statistics; default the model's
            ``visual.image_mean``/``image_std``, else open_clip's defaults. Views
            are normalised with them too.
        **options: :func:`maskkit.build_method` options: ``scorer``,
            ``keep_ratio``, ``block_size``, ``views``, ``objectives`` (extra
            objectives, or None to drop one), ``eval_keep_ratio``, ``head_norm``,
            ``teacher_warmup_steps``, ``seed`` and the rest.

    Returns:
        A :class:`~maskkit.MaskedContrastiveCLIP` in training mode: call it on
        ``(images (B, 3, H, W), texts (B, T))`` to get weighted ``loss_*`` terms
        and statistics, and call ``update_teacher()`` after each optimizer step
        (or register :func:`update_teacher_on_step`).

    Raises:
        TypeError: ``model`` is not an open_clip model or an option is unknown.
        ValueError: an option is out of range, or ``total_steps`` is missing.
    """
    from maskkit.method import build_method
    from maskkit.presets import resolve_preset

    _check_open_clip_model(model)
    mean = _stats(model, "image_mean", mean, DEFAULT_MEAN)
    std = _stats(model, "image_std", std, DEFAULT_STD)
    views = options.pop("views", None)
    if views is None:
        views = resolve_preset(preset)["views"]
    views = {"type": views} if isinstance(views, str) else dict(views)
    views.setdefault("mean", mean)
    views.setdefault("std", std)
    views.setdefault("input_normalized", bool(input_normalized))
    if input_normalized:
        views.setdefault("input_mean", mean)
        views.setdefault("input_std", std)
    method = build_method(preset, model, total_steps=total_steps, views=views, **options)
    method.train()
    return method


def update_teacher_on_step(method: nn.Module, optimizer):
    """Call ``method.update_teacher()`` after every ``optimizer.step()``; return the hook's handle.

    The hook is an optimizer step post-hook, so it runs once per step whatever
    the loop does between steps (gradient accumulation, skipped AMP steps).
    """
    if not hasattr(method, "update_teacher"):
        raise TypeError(f"method must be a MaskedContrastiveCLIP from prepare(), got {type(method).__name__}")

    def hook(optimizer, args, kwargs) -> None:
        method.update_teacher()

    return optimizer.register_step_post_hook(hook)


def compile_towers(model: nn.Module, backend: str = "inductor", **compile_options) -> list[str]:
    """Compile the transformer stacks of an open_clip model in place; return their names.

    ``nn.Module.compile`` keeps parameter names, so state dicts stay plain
    open_clip, while the per-step selection and view code around the stacks
    stays eager.
    """
    names = ("visual.transformer", "visual.trunk.blocks", "transformer", "text.transformer")
    compiled = []
    for name in names:
        module = model
        for part in name.split("."):
            module = getattr(module, part, None)
            if not isinstance(module, nn.Module):
                break
        if isinstance(module, nn.Module):
            module.compile(backend=backend, **compile_options)
            compiled.append(name)
    if not compiled:
        raise TypeError(f"found none of {names} in {type(model).__name__} to compile")
    return compiled
