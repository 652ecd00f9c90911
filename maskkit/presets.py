"""Named method configurations: CLIP, FLIP, SLIP, A-CLIP, A-CLIP-eff and attentive.

A preset is a plain dict that :func:`maskkit.build_method` turns into a
:class:`~maskkit.MaskedContrastiveCLIP`. Its keys:

``views``
    view-generator spec (a registered name or a dict with ``type``).
``scorer``
    scorer spec, or None for no masking.
``keep_ratio``, ``block_size``
    how much the selector keeps, in ``block_size x block_size`` units.
``masked_views``
    names of the views the selector masks, or ``"all"`` for every view except
    the teacher view.
``objectives``
    ``{objective name: options}``; ``clip`` takes ``views`` as ``{view: weight}``,
    ``simclr`` and ``byol`` take ``views`` (a pair or list of names) and ``weight``.
``ema``
    ``start_decay`` and ``end_decay`` of the EMA teacher's cosine schedule.
``freeze_patch_embed``, ``teacher_resolution``, ``teacher_warmup_steps``
    see :func:`maskkit.build_method`.

A dict with a ``base`` key starts from that preset and replaces the keys it sets.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

__all__ = ["PRESETS", "PRESET_KEYS", "ACLIP_EFF_KEEP_RATIO", "list_presets", "get_preset", "resolve_preset"]

PRESET_KEYS = frozenset({
    "views", "scorer", "keep_ratio", "block_size", "masked_views", "objectives", "ema",
    "freeze_patch_embed", "teacher_resolution", "teacher_warmup_steps",
})

_SIMCLR = {"views": ("view1", "view2"), "weight": 1.0, "temperature": 0.1}

# Keep ratio of A-CLIP-eff's two student views. The A-CLIP paper (Yang et al.,
# ICCV 2023) reports A-CLIP-eff at
# 0.86x CLIP's training time, but its recipe was not released. A teacher at half
# resolution (112 px, 7x7 patches) alone leaves two 50% views at 1.08x CLIP by
# maskkit.flops on ViT-B/16 + the 12-layer, 512-wide text tower at 77 tokens.
# maskkit.flops.solve_keep_ratio("aclip_eff", 0.86, "ViT-B-16") finds 18 of 49
# 2x2 blocks (72 of 196 patches) as the most that stays within 0.86x: it gives
# 0.84x, while 19 blocks would give 0.88x.
ACLIP_EFF_KEEP_RATIO = 18 / 49

PRESETS: dict[str, dict] = {
    "clip": {
        "views": {"type": "single"},
        "scorer": None,
        "keep_ratio": 1.0,
        "objectives": {"clip": {"views": {"view1": 1.0}}},
    },
    "flip": {
        "views": {"type": "single"},
        "scorer": "random",
        "keep_ratio": 0.5,
        "block_size": 1,
        "objectives": {"clip": {"views": {"view1": 1.0}}},
    },
    "slip": {
        "views": {"type": "slip"},
        "scorer": None,
        "keep_ratio": 1.0,
        "objectives": {
            "clip": {"views": {"clip": 1.0}},
            "simclr": {"views": ("simclr1", "simclr2"), "weight": 1.0, "temperature": 0.1},
        },
    },
    "aclip": {
        "views": {"type": "aclip"},
        "scorer": {"type": "ema_attention", "layers": "all"},
        "keep_ratio": 0.5,
        "block_size": 2,
        "masked_views": ("view1", "view2"),
        "objectives": {
            "clip": {"views": {"view1": 0.5, "view2": 0.5}},
            "simclr": dict(_SIMCLR),
            "byol": {"views": ("view1", "view2"), "weight": 2.0},
        },
        "ema": {"start_decay": 0.996, "end_decay": 1.0},
        "freeze_patch_embed": True,
    },
    "attentive": {
        "views": {"type": "single"},
        "scorer": {"type": "ema_attention", "layers": "all"},
        "keep_ratio": 0.5,
        "block_size": 2,
        "masked_views": ("view1",),
        "objectives": {"clip": {"views": {"view1": 1.0}}},
        "ema": {"start_decay": 0.996, "end_decay": 1.0},
    },
}

PRESETS["aclip_eff"] = copy.deepcopy(PRESETS["aclip"])
PRESETS["aclip_eff"].update(keep_ratio=ACLIP_EFF_KEEP_RATIO, teacher_resolution=0.5)


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(PRESETS)


def get_preset(name: str) -> dict:
    """Return a deep copy of the preset called ``name``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return copy.deepcopy(PRESETS[name])


def resolve_preset(preset: str | Mapping[str, Any]) -> dict:
    """Turn a preset name or dict (optionally with ``base``) into a full preset dict (a copy)."""
    if isinstance(preset, str):
        return get_preset(preset)
    if not isinstance(preset, Mapping):
        raise TypeError(f"preset must be a name or a dict, got {type(preset).__name__}")
    spec = copy.deepcopy(dict(preset))
    base = spec.pop("base", None)
    if base is not None:
        merged = resolve_preset(base)
        merged.update(spec)
        spec = merged
    missing = {"views", "objectives"} - set(spec)
    if missing:
        raise ValueError(f"preset {preset!r} is missing {sorted(missing)}; start from a named "
                         f"preset with 'base' (one of {', '.join(list_presets())})")
    return spec
