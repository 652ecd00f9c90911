"""maskkit: choose which image patches a CLIP vision transformer sees.

Public names are imported lazily, so ``import maskkit`` stays cheap and an
optional dependency is only needed by the feature that uses it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    # registries
    "register_scorer": "maskkit.registry",
    "register_view_generator": "maskkit.registry",
    "register_objective": "maskkit.registry",
    "build_scorer": "maskkit.registry",
    "build_view_generator": "maskkit.registry",
    "build_objective": "maskkit.registry",
    "list_scorers": "maskkit.registry",
    "list_view_generators": "maskkit.registry",
    "list_objectives": "maskkit.registry",
    # token selection and hosting
    "select_tokens": "maskkit.tokens",
    "num_kept_units": "maskkit.tokens",
    "gather_tokens": "maskkit.tokens",
    "keep_idx_to_mask": "maskkit.tokens",
    "TokenSelector": "maskkit.tokens",
    "attach": "maskkit.hosting",
    "AttentionProbe": "maskkit.attention",
    "EMATeacher": "maskkit.ema",
    "cosine_decay": "maskkit.ema",
    "Scorer": "maskkit.scorers.base",
    "ScoringInputs": "maskkit.scorers.base",
    "Views": "maskkit.views.base",
    # the composed method
    "build_method": "maskkit.method",
    "MaskedContrastiveCLIP": "maskkit.method",
    "list_presets": "maskkit.presets",
    "estimate_flops": "maskkit.flops",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maskkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from maskkit.attention import AttentionProbe
    from maskkit.ema import EMATeacher, cosine_decay
    from maskkit.flops import estimate_flops
    from maskkit.hosting import attach
    from maskkit.method import MaskedContrastiveCLIP, build_method
    from maskkit.presets import list_presets
    from maskkit.registry import (
        build_objective,
        build_scorer,
        build_view_generator,
        list_objectives,
        list_scorers,
        list_view_generators,
        register_objective,
        register_scorer,
        register_view_generator,
    )
    from maskkit.scorers.base import Scorer, ScoringInputs
    from maskkit.tokens import TokenSelector, gather_tokens, keep_idx_to_mask, num_kept_units, select_tokens
    from maskkit.views.base import Views
