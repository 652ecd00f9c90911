"""Visualizer backends for maskkit runs: local files always, TensorBoard when it is installed."""

from __future__ import annotations

import importlib.util

__all__ = ["vis_backends"]


def vis_backends(tensorboard: bool = True) -> list[dict]:
    """``visualizer.vis_backends`` entries: ``LocalVisBackend``, plus ``TensorboardVisBackend``
    when ``tensorboard`` is True and the ``tensorboard`` package can be imported."""
    backends = [dict(type="LocalVisBackend")]
    if tensorboard and importlib.util.find_spec("tensorboard") is not None:
        backends.append(dict(type="TensorboardVisBackend"))
    return backends
