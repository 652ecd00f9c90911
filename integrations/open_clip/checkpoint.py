"""Checkpoint layout of the open_clip integration.

A checkpoint stays an open_clip checkpoint::

    {
        "epoch": int,                 # open_clip_train's entries, unchanged
        "name": str,
        "state_dict": {...},          # plain open_clip keys: no "module.", no wrapper prefix
        "optimizer": {...},
        "scaler": {...},              # with --precision amp
        "maskkit": {                  # the one extra entry; tensors and plain values only
            "method": {"step", "seed", "objectives", "teacher", "scorer"},
            "seed_generator": uint8 tensor,   # launcher runs only
        },
    }

``open_clip.create_model(name, pretrained=FILE)`` loads such a file as written
(``torch.load(weights_only=True)`` and a strict state-dict load), and
``maskkit export`` reduces it to the bare state dict. The launcher writes it
through :func:`to_launcher_checkpoint` and reads it back through
:func:`from_launcher_checkpoint`. Custom loops use :func:`save_checkpoint` and
:func:`load_checkpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from maskkit.export import MASKKIT_STATE_KEY

__all__ = ["MASKKIT_STATE_KEY", "DDP_PREFIX", "strip_prefix", "check_plain", "to_launcher_checkpoint",
           "from_launcher_checkpoint", "save_checkpoint", "load_checkpoint"]

logger = logging.getLogger(__name__)

DDP_PREFIX = "module."
_PLAIN = (int, float, bool, str, bytes, type(None))


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = DDP_PREFIX) -> dict[str, Any]:
    """Return ``state_dict`` with ``prefix`` removed from every key that starts with it."""
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state_dict.items()}


def check_plain(value: Any, where: str = MASKKIT_STATE_KEY) -> None:
    """Check that ``value`` holds only tensors, numbers, strings, None, dicts, lists and tuples.

    Those are what ``torch.load(weights_only=True)`` accepts without allow-listing.

    Raises:
        TypeError: naming the path of the first other value and its type.
    """
    if torch.is_tensor(value) or isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint loaded with weights_only=True "
                    "holds only tensors, numbers, strings, None, dicts, lists and tuples")


def to_launcher_checkpoint(checkpoint: Mapping[str, Any], module) -> dict:
    """Turn open_clip_train's checkpoint dict into the layout above.

    Args:
        checkpoint: the dict open_clip_train is about to save.
        module: the :class:`~maskkit.integrations.open_clip.module.OpenCLIPTrainModule`
            being trained.
    """
    out = dict(checkpoint)
    out["state_dict"] = strip_prefix(checkpoint["state_dict"])
    state = module.maskkit_state()
    check_plain(state)
    out[MASKKIT_STATE_KEY] = state
    return out


def from_launcher_checkpoint(checkpoint: Mapping[str, Any], module, distributed: bool) -> dict:
    """Restore maskkit's state from ``checkpoint`` and return it ready for open_clip_train's load.

    Under DDP, open_clip_train loads ``state_dict`` into the DDP wrapper, so the
    ``module.`` prefix is added back to plain keys. A checkpoint without a
    ``"maskkit"`` entry (plain open_clip) is accepted: the teacher, heads and
    scorer then keep their fresh state, and a warning is logged.
    """
    out = dict(checkpoint)
    if MASKKIT_STATE_KEY in out:
        module.load_maskkit_state(out.pop(MASKKIT_STATE_KEY))
    else:
        logger.warning("resume checkpoint has no %r entry; the EMA teacher, heads and scorer start fresh",
                       MASKKIT_STATE_KEY)
    if distributed:
        key = "state_dict" if "state_dict" in out else None
        state = out[key] if key else out
        if state and not next(iter(state)).startswith(DDP_PREFIX):
            state = {DDP_PREFIX + name: value for name, value in state.items()}
        if key:
            out[key] = state
        else:
            out = state
    return out


def save_checkpoint(path: str | Path, method: nn.Module, *, optimizer: Optional[torch.optim.Optimizer] = None,
                    epoch: Optional[int] = None, **extra: Any) -> dict:
    """Write ``method``'s host weights and maskkit state in the layout above (custom loops).

    Args:
        path: file to write; parent folders are created.
        method: a :class:`~maskkit.MaskedContrastiveCLIP`.
        optimizer: saved under ``"optimizer"`` when given.
        epoch: saved under ``"epoch"`` when given.
        **extra: further plain entries (for example ``scaler=scaler.state_dict()``).

    Returns:
        The dict that was written.
    """
    checkpoint: dict[str, Any] = {"state_dict": method.model.state_dict()}
    if epoch is not None:
        checkpoint["epoch"] = int(epoch)
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint.update(extra)
    state = {"method": method.extra_state_dict()}
    check_plain(state)
    checkpoint[MASKKIT_STATE_KEY] = state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return checkpoint


def load_checkpoint(path: str | Path, method: nn.Module, *,
                    optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    """Load a file written by :func:`save_checkpoint` or the launcher into ``method`` (and ``optimizer``).

    The host weights load strictly. Returns the checkpoint dict, read with
    ``weights_only=True``.

    Raises:
        KeyError: the file has no ``"maskkit"`` entry, so it contains no teacher or heads.
    """
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if MASKKIT_STATE_KEY not in checkpoint:
        raise KeyError(f"{path} has no {MASKKIT_STATE_KEY!r} entry; it is a plain open_clip checkpoint. "
                       "Load it with open_clip.create_model(name, pretrained=PATH) before calling prepare()")
    method.model.load_state_dict(strip_prefix(checkpoint["state_dict"]))
    method.load_extra_state_dict(checkpoint[MASKKIT_STATE_KEY]["method"])
    if optimizer is not None and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint
