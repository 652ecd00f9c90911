"""Install a :class:`~maskkit.TokenSelector` in the patch-dropout slot of a ViT.

The slot sits after the position embedding and before the pre-norm in every
supported host, so the selector receives position-embedded tokens. Hosts are found
by duck typing, without importing open_clip or timm:

- open_clip ``VisionTransformer`` (``model.visual`` of ``CLIP`` and
  ``CustomTextCLIP``, or the tower itself): slot ``patch_dropout``, 1 prefix
  token (CLS), grid ``grid_size``.
- open_clip ``TimmModel`` towers (``model.visual.trunk``) and timm
  ``VisionTransformer``: slot ``patch_drop``, ``num_prefix_tokens`` from the
  host (0 for SigLIP-style towers), grid ``patch_embed.grid_size``.
- timm ``Eva``: slot ``patch_drop``, which is None unless a patch-drop rate was
  set. Eva's ``_pos_embed`` (timm 1.0.31) unpacks ``(x, keep_indices)`` from the
  slot and gathers the rotary embeddings with those patch-relative indices
  (None = nothing dropped), so the selector returns ``(x, keep_idx)`` there.

Attaching adds no parameters or buffers, so the host's state-dict keys do not
change. While the selector is active, ``forward_intermediates`` with NCHW output
raises, because a dropped-token sequence cannot be reshaped into the grid.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from maskkit.tokens import TokenSelector

__all__ = ["attach", "AttachHandle"]

logger = logging.getLogger(__name__)

_MISSING = object()

_SEARCHED = (
    "model.visual.patch_dropout or model.patch_dropout with grid_size (open_clip VisionTransformer); "
    "model.visual.trunk.patch_drop (open_clip TimmModel); "
    "model.patch_drop with patch_embed.grid_size and num_prefix_tokens (timm VisionTransformer or Eva)"
)


@dataclass
class _Slot:
    host: nn.Module
    name: str
    num_prefix_tokens: int
    grid: tuple[int, int]
    returns_indices: bool


def _is_open_clip_vit(module: Any) -> bool:
    return hasattr(module, "patch_dropout") and hasattr(module, "grid_size") and hasattr(module, "class_embedding")


def _is_timm_vit(module: Any) -> bool:
    patch_embed = getattr(module, "patch_embed", None)
    return (hasattr(module, "patch_drop") and hasattr(module, "num_prefix_tokens")
            and hasattr(patch_embed, "grid_size"))


def _find_slot(model: nn.Module) -> _Slot:
    towers = [model]
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module):
        towers.insert(0, visual)
    for tower in list(towers):
        trunk = getattr(tower, "trunk", None)
        if isinstance(trunk, nn.Module):
            towers.insert(towers.index(tower) + 1, trunk)

    for tower in towers:
        if _is_open_clip_vit(tower):
            grid = tuple(int(side) for side in tower.grid_size)
            return _Slot(tower, "patch_dropout", 1, grid, returns_indices=False)
        if _is_timm_vit(tower):
            grid = tuple(int(side) for side in tower.patch_embed.grid_size)
            current = tower.patch_drop
            # Eva sets `rope` (possibly None) and an empty slot of None; its
            # _pos_embed unpacks (x, keep_indices) from whatever fills the slot.
            returns_indices = (current is None or hasattr(tower, "rope")
                               or type(current).__name__ == "PatchDropoutWithIndices")
            return _Slot(tower, "patch_drop", int(tower.num_prefix_tokens), grid, returns_indices)
    raise TypeError(
        f"no patch-dropout slot found in {type(model).__name__}; looked for {_SEARCHED}"
    )


def _output_format(method, args, kwargs) -> Optional[str]:
    try:
        bound = inspect.signature(method).bind(*args, **kwargs)
    except TypeError:
        return None  # let the original method report its own argument error
    bound.apply_defaults()
    return bound.arguments.get("output_fmt")


@dataclass
class AttachHandle:
    """Record of one :func:`attach`, whose ``remove()`` puts the original slot back.

    Attributes:
        host: the module whose slot contains the selector.
        slot: attribute name of the slot on ``host``.
        selector: the attached selector.
        num_prefix_tokens: prefix tokens of the host, copied to the selector.
        grid: ``(h, w)`` patch grid of the host, copied to the selector.
    """

    host: nn.Module
    slot: str
    selector: TokenSelector
    num_prefix_tokens: int
    grid: tuple[int, int]
    _original: dict = field(default_factory=dict, repr=False)
    _selector_settings: dict = field(default_factory=dict, repr=False)
    attached: bool = True

    def remove(self) -> None:
        """Restore the host's original slot and ``forward_intermediates``; a second call does nothing."""
        if not self.attached:
            return
        host = self.host
        if host._modules.get(self.slot) is not self.selector:
            raise RuntimeError(
                f"cannot restore {type(host).__name__}.{self.slot}: it no longer contains the attached "
                "selector because something replaced it after attach"
            )
        # Put the original value back where nn.Module stored it: a module in
        # `_modules`, or a plain attribute (Eva's None) in the instance dict.
        del host._modules[self.slot]
        in_modules, value = self._original["slot"]
        if in_modules:
            host._modules[self.slot] = value
        else:
            host.__dict__[self.slot] = value

        method = self._original["forward_intermediates"]
        if method is _MISSING:
            host.__dict__.pop("forward_intermediates", None)
        elif method is not None:
            host.__dict__["forward_intermediates"] = method

        for name, value in self._selector_settings.items():
            setattr(self.selector, name, value)
        self.selector._attached_handle = None
        self.attached = False

    def __enter__(self) -> "AttachHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


class _NCHWGuard:
    """Instance-level ``forward_intermediates`` that rejects NCHW output while the selector is active.

    A class (not a closure) so that ``copy.deepcopy`` and pickling of the host
    carry the guard over to the copy, bound to the copied host and selector.
    """

    def __init__(self, host: nn.Module, selector: TokenSelector, inner=None):
        self.host = host
        self.selector = selector
        self.inner = inner  # an instance-level method that existed before attach, else None

    def _method(self):
        if self.inner is not None:
            return self.inner
        return type(self.host).forward_intermediates.__get__(self.host)

    def __call__(self, *args, **kwargs):
        method = self._method()
        if self.selector.active and _output_format(method, args, kwargs) == "NCHW":
            raise ValueError(
                "forward_intermediates with output_fmt='NCHW' is invalid while a TokenSelector drops "
                "tokens, because the kept tokens no longer fill the patch grid. Pass output_fmt='NLC' "
                "(image_output_fmt='NLC' on an open_clip CLIP), switch to eval mode without "
                "eval_keep_ratio, or remove the selector with handle.remove()"
            )
        return method(*args, **kwargs)


def attach(model: nn.Module, selector: TokenSelector) -> AttachHandle:
    """Put ``selector`` into the patch-dropout slot of ``model``'s vision transformer.

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP`` or vision tower, an open_clip
            ``TimmModel``, or a timm ``VisionTransformer``/``Eva``.
        selector: a :class:`~maskkit.TokenSelector` not attached elsewhere. Its
            ``grid``, ``num_prefix_tokens`` and ``return_indices`` are set from the
            host (and restored by ``remove()``), and its train/eval mode is set to
            the host's.

    Returns:
        An :class:`AttachHandle`; ``handle.remove()`` restores the original slot.

    Raises:
        TypeError: no supported slot was found (the message lists what was searched).
        ValueError: the host already contains a selector, the selector is attached
            elsewhere, or the host's grid does not fit the selector's settings.
    """
    if not isinstance(selector, TokenSelector):
        raise TypeError(f"selector must be a maskkit.TokenSelector, got {type(selector).__name__}")
    slot = _find_slot(model)
    host = slot.host
    current = getattr(host, slot.name)
    if isinstance(current, TokenSelector):
        raise ValueError(
            f"{type(host).__name__}.{slot.name} already contains a TokenSelector. "
            "Call remove() on its AttachHandle before attaching another."
        )
    if getattr(selector, "_attached_handle", None) is not None:
        other = selector._attached_handle.host
        raise ValueError(
            f"this selector is already attached to a {type(other).__name__}. "
            "Use one selector per host, or call remove() on the first AttachHandle."
        )

    h, w = slot.grid
    b = selector.block_size
    if h % b or w % b:
        raise ValueError(f"host grid {slot.grid} is not divisible by the selector's block_size={b}")
    num_units = (h // b) * (w // b)
    if selector.keep_count is not None and selector.keep_count > num_units:
        raise ValueError(
            f"keep_count={selector.keep_count} exceeds the {num_units} selection units of grid {slot.grid} "
            f"with block_size={b}; use a keep_count in [1, {num_units}]"
        )

    settings = {name: getattr(selector, name) for name in ("grid", "num_prefix_tokens", "return_indices")}
    in_modules = slot.name in host._modules
    original_slot = (in_modules, host._modules[slot.name] if in_modules else host.__dict__.get(slot.name))
    original_method = host.__dict__.get("forward_intermediates", _MISSING)

    selector.grid = slot.grid
    selector.num_prefix_tokens = slot.num_prefix_tokens
    selector.return_indices = slot.returns_indices
    selector.train(host.training)
    if not in_modules:
        del host.__dict__[slot.name]
    setattr(host, slot.name, selector)
    if hasattr(type(host), "forward_intermediates") or original_method is not _MISSING:
        inner = None if original_method is _MISSING else original_method
        host.__dict__["forward_intermediates"] = _NCHWGuard(host, selector, inner)
    else:
        original_method = None

    handle = AttachHandle(host=host, slot=slot.name, selector=selector, num_prefix_tokens=slot.num_prefix_tokens,
                          grid=slot.grid, _original={"slot": original_slot, "forward_intermediates": original_method},
                          _selector_settings=settings)
    selector._attached_handle = handle
    logger.debug("attached %r to %s.%s", selector, type(host).__name__, slot.name)
    return handle
