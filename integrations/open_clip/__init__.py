"""open_clip integration: a custom-loop API and an open_clip_train launcher.

- :func:`prepare` turns an open_clip model into a :class:`~maskkit.MaskedContrastiveCLIP`
  for a plain PyTorch loop; :func:`update_teacher_on_step` moves its EMA teacher
  after every optimizer step.
- ``python -m maskkit.integrations.open_clip.train`` runs open_clip_train with a
  maskkit method (see :mod:`maskkit.integrations.open_clip.train`).
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read open_clip
  checkpoints with one extra ``"maskkit"`` entry.

Needs the ``open_clip`` extra: ``pip install "maskkit[open_clip]"``.
"""

from __future__ import annotations

import importlib

__all__ = ["prepare", "update_teacher_on_step", "compile_towers", "save_checkpoint", "load_checkpoint",
           "OpenCLIPTrainModule", "MaskedCLIPLoss"]

_EXPORTS = {
    "prepare": "api",
    "update_teacher_on_step": "api",
    "compile_towers": "api",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "OpenCLIPTrainModule": "module",
    "MaskedCLIPLoss": "loss",
}


def _require_open_clip() -> None:
    try:
        importlib.import_module("open_clip")
    except ImportError as error:
        raise ImportError('maskkit.integrations.open_clip needs open_clip_torch; install it with '
                          'pip install "maskkit[open_clip]"') from error


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _require_open_clip()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
