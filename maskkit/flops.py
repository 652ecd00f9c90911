"""Analytic FLOP count of one training step, from token counts and tower sizes.

The model counts the matrix multiplications of each transformer pass, which
dominate the cost of a ViT and a text transformer. Per layer, with ``n``
tokens, width ``d`` and MLP ratio ``m``, one forward pass costs::

    qkv + output projections   8 * n * d**2
    attention scores, values   4 * n**2 * d     (the quadratic term)
    MLP                        4 * m * n * d**2

(1 multiply-add = 2 FLOPs). The patch embedding runs on every patch before the
selector drops any, the final projection on the pooled token only. Layer norms,
softmax, GELU and the loss itself are left out. A trained pass costs its forward
plus a backward of twice the forward. The EMA teacher runs forward only, and the
text tower runs once per step. Heads (SimCLR and BYOL MLPs) are counted when asked.

Convention: a "pass" is one run of a tower over one view of the whole batch.

Example:
    >>> from maskkit.flops import flop_ratio
    >>> round(flop_ratio("slip", "clip", "ViT-B-16"), 2)
    2.71
"""

from __future__ import annotations

from typing import Any, Mapping

from maskkit.tokens import num_kept_units

__all__ = [
    "transformer_forward_flops",
    "kept_patches",
    "resolve_model_config",
    "plan_passes",
    "estimate_flops",
    "flop_ratio",
    "solve_keep_ratio",
]

# View names and sizes (relative to the input image side) of the built-in view
# generators. Other generators are run once on a blank image to find them.
_BUILTIN_VIEWS = {
    "single": (("view1", 1.0),),
    "aclip": (("view1", 1.0), ("view2", 1.0), ("teacher", 1.0)),
    "slip": (("clip", 1.0), ("simclr1", 1.0), ("simclr2", 1.0)),
}
_TEACHER_VIEW = {"aclip": "teacher"}
_DEFAULT_MLP_RATIO = 4.0


def transformer_forward_flops(tokens: int, width: int, layers: int, mlp_ratio: float = 4.0) -> int:
    """Count the forward FLOPs of ``layers`` pre-norm transformer blocks on ``tokens`` tokens.

    Example:
        >>> transformer_forward_flops(tokens=2, width=4, layers=1, mlp_ratio=4.0)
        832
    """
    per_layer = (8 + 4 * mlp_ratio) * tokens * width**2 + 4 * tokens**2 * width
    return int(round(layers * per_layer))


def kept_patches(grid: tuple[int, int], keep_ratio: float = 1.0, block_size: int = 1) -> int:
    """Return how many patches the selector keeps out of a ``grid`` at ``keep_ratio``.

    Units are ``block_size x block_size`` blocks; K = max(1, floor(U * keep_ratio + 0.5))
    units are kept (:func:`maskkit.num_kept_units`), each worth ``block_size**2`` patches.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    h, w = grid
    if keep_ratio == 1.0:
        return h * w
    if block_size < 1 or h % block_size or w % block_size:
        raise ValueError(f"block_size {block_size!r} must be >= 1 and divide the grid {grid}")
    units = (h // block_size) * (w // block_size)
    return num_kept_units(units, keep_ratio=keep_ratio) * block_size**2


def resolve_model_config(model_config: Any) -> dict:
    """Normalise ``model_config`` to ``{"vision": {...}, "text": {...}, "embed_dim": int}``.

    Accepts such a dict, an open_clip model name (read with ``open_clip.get_model_config``),
    an open_clip ``CLIP`` model or a :class:`~maskkit.MaskedContrastiveCLIP` that contains one.
    Missing ``mlp_ratio`` entries default to 4.
    """
    if isinstance(model_config, str):
        import open_clip

        raw = open_clip.get_model_config(model_config)
        if raw is None:
            raise ValueError(f"open_clip has no model config named {model_config!r}; "
                             "see open_clip.list_models()")
        config = {"vision": dict(raw["vision_cfg"]), "text": dict(raw["text_cfg"]),
                  "embed_dim": raw["embed_dim"]}
    elif isinstance(model_config, Mapping):
        missing = {"vision", "text", "embed_dim"} - set(model_config)
        if missing:
            raise ValueError(f"model_config is missing {sorted(missing)}; expected keys "
                             "'vision', 'text' and 'embed_dim'")
        config = {"vision": dict(model_config["vision"]), "text": dict(model_config["text"]),
                  "embed_dim": int(model_config["embed_dim"])}
    else:
        config = _config_from_model(getattr(model_config, "model", model_config))
    for tower, keys in (("vision", ("image_size", "patch_size", "width", "layers")),
                        ("text", ("context_length", "width", "layers"))):
        absent = [key for key in keys if key not in config[tower]]
        if absent:
            raise ValueError(f"model_config[{tower!r}] is missing {absent}")
        config[tower].setdefault("mlp_ratio", _DEFAULT_MLP_RATIO)
    for key in ("image_size", "patch_size"):
        value = config["vision"][key]
        config["vision"][key] = int(value[0] if isinstance(value, (tuple, list)) else value)
    return config


def _config_from_model(model) -> dict:
    visual, text = getattr(model, "visual", None), getattr(model, "transformer", None)
    if visual is None or text is None or not hasattr(visual, "transformer"):
        raise TypeError(f"cannot read tower sizes from {type(model).__name__}; pass an open_clip "
                        "CLIP with a native ViT tower, a model name or a config dict")

    def tower(transformer):
        fc = transformer.resblocks[0].mlp.c_fc
        return {"width": transformer.width, "layers": transformer.layers,
                "mlp_ratio": fc.out_features / transformer.width}

    vision = dict(tower(visual.transformer), image_size=visual.image_size, patch_size=visual.patch_size)
    text_cfg = dict(tower(text), context_length=model.context_length)
    return {"vision": vision, "text": text_cfg, "embed_dim": int(visual.output_dim)}


def plan_passes(preset: Any, image_size: int, patch_size: int) -> list[dict]:
    """List the image-tower passes one step of ``preset`` runs.

    Returns dicts with ``name``, ``image_size``, ``patches`` (kept patch tokens),
    ``grid`` and ``trained`` (False for the EMA teacher's forward-only pass).
    """
    from maskkit.presets import resolve_preset

    spec = resolve_preset(preset)
    views_spec = spec["views"]
    kind = views_spec if isinstance(views_spec, str) else views_spec.get("type")
    view_sizes = _view_sizes(views_spec, kind, image_size)
    teacher_name = _TEACHER_VIEW.get(kind)
    needs_teacher = spec.get("scorer") is not None and _scorer_type(spec["scorer"]) == "ema_attention"
    needs_teacher = needs_teacher or "byol" in spec.get("objectives", {})
    online = [name for name in view_sizes if name != teacher_name]
    masked = spec.get("masked_views", "all")
    masked = online if masked == "all" else list(masked)
    keep_ratio = float(spec.get("keep_ratio") or 1.0)
    block = int(spec.get("block_size") or 1)

    passes = []
    if needs_teacher:
        teacher_size = view_sizes[teacher_name] if teacher_name else view_sizes[online[0]]
        teacher_size = _teacher_pixels(spec.get("teacher_resolution"), image_size, patch_size, teacher_size)
        grid = (teacher_size // patch_size,) * 2
        passes.append({"name": "teacher", "image_size": teacher_size, "grid": grid,
                       "patches": grid[0] * grid[1], "trained": False})
    for name in online:
        size = view_sizes[name]
        grid = (size // patch_size,) * 2
        ratio = keep_ratio if (name in masked and spec.get("scorer") is not None) else 1.0
        passes.append({"name": name, "image_size": size, "grid": grid,
                       "patches": kept_patches(grid, ratio, block), "trained": True})
    return passes


def _scorer_type(scorer: Any) -> str | None:
    if isinstance(scorer, str):
        return scorer
    if isinstance(scorer, Mapping):
        return scorer.get("type")
    return None if getattr(scorer, "requires", None) is None else (
        "ema_attention" if "teacher_view" in scorer.requires else "tokens")


def _teacher_pixels(resolution: Any, image_size: int, patch_size: int, default: int) -> int:
    if resolution is None:
        return default
    if isinstance(resolution, float):
        pixels = max(patch_size, round(image_size * resolution / patch_size) * patch_size)
        return int(pixels)
    return int(resolution)


def _view_sizes(views_spec: Any, kind: str | None, image_size: int) -> dict[str, int]:
    if kind in _BUILTIN_VIEWS:
        options = {} if isinstance(views_spec, str) else views_spec
        sizes = {name: int(round(image_size * scale)) for name, scale in _BUILTIN_VIEWS[kind]}
        if kind == "aclip" and options.get("teacher_size"):
            sizes["teacher"] = int(options["teacher_size"])
        return sizes
    import torch

    from maskkit.registry import build_view_generator

    generator = build_view_generator(views_spec)
    views = generator(torch.zeros(1, 3, image_size, image_size), torch.Generator().manual_seed(0))
    return {name: int(view.shape[-1]) for name, view in zip(views.names, views.views)}


def _head_flops(spec: Mapping, width: int, online: list[str]) -> tuple[int, int]:
    """Return per-sample (trained forward, teacher forward) FLOPs of the objectives' MLP heads."""
    objectives = spec.get("objectives", {})
    trained = teacher = 0
    if "simclr" in objectives:
        options = objectives["simclr"]
        hidden = options.get("hidden_dim", spec.get("head_hidden_dim") or 4096)
        out = options.get("out_dim", spec.get("head_out_dim") or 256)
        mlp = 2 * (width * hidden + hidden * hidden + hidden * out)
        trained += mlp * len(options.get("views", online[:2]))
    if "byol" in objectives:
        options = objectives["byol"]
        hidden = options.get("hidden_dim", spec.get("head_hidden_dim") or 4096)
        out = options.get("out_dim", spec.get("head_out_dim") or 256)
        projector = 2 * (width * hidden + hidden * out)
        predictor = 2 * (out * hidden + hidden * out)
        trained += (projector + predictor) * len(options.get("views", online))
        teacher += projector
    return trained, teacher


def estimate_flops(method_or_preset: Any, model_config: Any, batch: int = 1, *,
                   include_heads: bool = True) -> dict:
    """Count the FLOPs of one training step of a method or preset on ``batch`` samples.

    Args:
        method_or_preset: a preset name, a preset dict, or a built
            :class:`~maskkit.MaskedContrastiveCLIP` (its resolved preset is used).
        model_config: see :func:`resolve_model_config`.
        batch: samples per step (>= 1).
        include_heads: add the SimCLR and BYOL MLP heads.

    Returns:
        ``{"passes": [...], "text": {...}, "heads": {...}, "forward", "backward",
        "total", "per_sample"}``. Each pass entry has ``name``, ``image_size``,
        ``tokens`` (prefix + kept patches), ``forward``, ``backward`` and ``total``.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    preset = getattr(method_or_preset, "preset", method_or_preset)
    if model_config is None and hasattr(method_or_preset, "model"):
        model_config = method_or_preset.model
    config = resolve_model_config(model_config)
    vision, text = config["vision"], config["text"]
    patch, width = vision["patch_size"], vision["width"]

    passes = []
    for item in plan_passes(preset, vision["image_size"], patch):
        tokens = 1 + item["patches"]
        embed = 2 * item["grid"][0] * item["grid"][1] * 3 * patch**2 * width
        forward = embed + transformer_forward_flops(tokens, width, vision["layers"], vision["mlp_ratio"])
        forward = (forward + 2 * width * config["embed_dim"]) * batch
        backward = 2 * forward if item["trained"] else 0
        passes.append(dict(item, tokens=tokens, forward=forward, backward=backward,
                           total=forward + backward))

    text_forward = transformer_forward_flops(text["context_length"], text["width"], text["layers"],
                                             text["mlp_ratio"])
    text_forward = (text_forward + 2 * text["width"] * config["embed_dim"]) * batch
    text_entry = {"tokens": text["context_length"], "forward": text_forward,
                  "backward": 2 * text_forward, "total": 3 * text_forward}

    heads = {"forward": 0, "backward": 0, "total": 0}
    if include_heads:
        online = [item["name"] for item in passes if item["trained"]]
        trained, teacher = _head_flops(_preset_dict(preset), width, online)
        heads = {"forward": (trained + teacher) * batch, "backward": 2 * trained * batch}
        heads["total"] = heads["forward"] + heads["backward"]

    forward = sum(item["forward"] for item in passes) + text_forward + heads["forward"]
    backward = sum(item["backward"] for item in passes) + text_entry["backward"] + heads["backward"]
    return {"passes": passes, "text": text_entry, "heads": heads, "forward": forward,
            "backward": backward, "total": forward + backward, "per_sample": (forward + backward) / batch}


def _preset_dict(preset: Any) -> dict:
    from maskkit.presets import resolve_preset

    return resolve_preset(preset)


def flop_ratio(preset_a: Any, preset_b: Any, model_config: Any, *, include_heads: bool = True) -> float:
    """Return the step FLOPs of ``preset_a`` divided by those of ``preset_b`` on one model."""
    config = resolve_model_config(model_config)
    cost_a = estimate_flops(preset_a, config, include_heads=include_heads)["total"]
    cost_b = estimate_flops(preset_b, config, include_heads=include_heads)["total"]
    return cost_a / cost_b


def solve_keep_ratio(preset: Any, target_ratio: float, model_config: Any, *,
                     reference: Any = "clip") -> float:
    """Find the largest keep ratio whose step cost is at most ``target_ratio`` x ``reference``.

    The keep ratio only changes the cost in whole selection units, so the result
    is the ratio U_k / U of the largest affordable unit count U_k out of U.
    Raises ValueError when even one kept unit costs more than the target.
    """
    spec = dict(_preset_dict(preset))
    config = resolve_model_config(model_config)
    vision = config["vision"]
    block = int(spec.get("block_size") or 1)
    side = vision["image_size"] // vision["patch_size"] // block
    units = side * side
    budget = target_ratio * estimate_flops(reference, config)["total"]
    for kept in range(units, 0, -1):
        spec["keep_ratio"] = kept / units
        if estimate_flops(spec, config)["total"] <= budget:
            return kept / units
    raise ValueError(f"no keep ratio of {preset!r} reaches {target_ratio!r}x the cost of {reference!r}")
