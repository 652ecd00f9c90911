"""The composed training step: views, teacher scores, masked student passes and objectives.

:func:`build_method` turns a preset (see :mod:`maskkit.presets`) and a host model
into a :class:`MaskedContrastiveCLIP`. One ``forward(images, texts)`` runs:

1. the view generator on the device, with the method's seeded generator;
2. the EMA teacher, once, on the teacher view (no gradient); its CLS-to-patch
   attention is warped onto each masked view's box;
3. the student's vision tower once per online view, masked by the selector
   (teacher scores through ``selector.use_scores``, or the selector's own token
   scorer), unmasked for views the preset leaves whole;
4. the text tower once, then every objective on the collected outputs.

It returns weighted ``loss_*`` terms that sum to the total, plus detached
statistics (``tokens_<view>``, ``teacher_entropy``, ``ema_decay`` and whatever
the objectives report). Call :meth:`MaskedContrastiveCLIP.update_teacher` once
after every optimizer step.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.presets import PRESET_KEYS, resolve_preset

__all__ = ["MaskedContrastiveCLIP", "build_method", "OVERRIDES", "PRECISIONS"]

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_SCALE_MAX = math.log(100.0)

# Options build_method accepts besides the preset's own keys.
OVERRIDES = frozenset({
    "keep_ratio", "block_size", "scorer", "views", "objectives", "masked_views", "freeze_patch_embed",
    "precision", "start_decay", "end_decay", "teacher_warmup_steps", "seed", "eval_keep_ratio",
    "teacher_resolution", "local_loss", "gather_with_grad", "head_norm", "head_hidden_dim",
    "head_out_dim", "strategy", "random_fraction",
})


class MaskedContrastiveCLIP(nn.Module):
    """A host CLIP model with views, token selection, an EMA teacher and objectives.

    Build it with :func:`build_method`. Submodules: ``model`` (the host, whose
    state dict stays plain open_clip/timm), ``view_generator``, ``scorer`` (None
    without masking), ``objectives`` (a ModuleDict holding the heads) and
    ``teacher`` (an :class:`~maskkit.EMATeacher`, or None). ``selector`` is
    attached inside the host's patch-dropout slot and owns no parameters.
    """

    def __init__(self, model: nn.Module, *, preset: dict, view_generator: nn.Module, objectives: nn.ModuleDict,
                 selector=None, handle=None, scorer: Optional[nn.Module] = None,
                 teacher_runner: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None,
                 masked_views: tuple[str, ...] = (), precision: str = "fp32", teacher_warmup_steps: int = 0,
                 seed: int = 0):
        super().__init__()
        self.model = model
        self.preset = preset
        self.view_generator = view_generator
        self.objectives = objectives
        self.scorer = scorer
        self.teacher = teacher
        # The runner is the scorer itself for ema_attention; it is registered only when it is not.
        self.teacher_runner = teacher_runner if teacher_runner is not scorer else None
        self.__dict__["_runner"] = teacher_runner
        self.__dict__["selector"] = selector
        self.__dict__["_handle"] = handle
        self.masked_views = tuple(masked_views)
        self.precision = precision
        self.teacher_warmup_steps = int(teacher_warmup_steps)
        self.seed = int(seed)
        self.step = 0
        self._generators: dict[str, torch.Generator] = {}

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Encode normalised (B, 3, H, W) ``images`` with the host, as open_clip's ``encode_image`` does.

        In eval mode the selector passes every token unless ``eval_keep_ratio`` is
        set. Masked inference with a teacher-based scorer selects by the teacher's
        attention on the same images.
        """
        from maskkit.views.warp import warp_scores

        selector, runner = self.selector, self._runner
        if selector is None or not selector.active or selector.scorer is not None or runner is None:
            return self.model.encode_image(images, normalize=normalize)
        with torch.no_grad():
            out = runner.run_teacher(images)
        scores = out.scores
        if tuple(out.grid) != tuple(selector.grid):
            whole = scores.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(images.shape[0], 4)
            scores = warp_scores(scores, out.grid, whole, whole, selector.grid)
        with selector.use_scores(scores):
            return self.model.encode_image(images, normalize=normalize)

    @torch.no_grad()
    def select_patches(self, images: torch.Tensor) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
        """Return the patches the training selection keeps on whole, unaugmented ``images``.

        For mask statistics at evaluation: the images act as their own teacher
        view, and selection runs at the training ``keep_ratio`` (deterministic
        top-k). Returns ``(keep_idx (B, K), grid)``; presets without masking keep
        every patch, so K = N there.
        """
        selector = self.selector
        if selector is None:
            from maskkit.towers import find_vision_tower, tower_grid

            grid = tuple(tower_grid(find_vision_tower(self.model), tuple(images.shape[-2:])))
            every = torch.arange(grid[0] * grid[1], device=images.device)
            return every.expand(images.shape[0], -1), grid
        saved = selector.eval_keep_ratio
        was_training = self.model.training
        if saved is None:
            selector.eval_keep_ratio = selector.keep_ratio
        self.model.eval()
        try:
            self.encode_image(images)
            return selector.keep_idx, tuple(selector.grid)
        finally:
            selector.eval_keep_ratio = saved
            self.model.train(was_training)

    def encode_text(self, texts: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Encode (B, T) token ids with the host's ``encode_text``."""
        return self.model.encode_text(texts, normalize=normalize)

    def detach(self) -> None:
        """Remove the selector from the host model, leaving it a plain model."""
        if self._handle is not None:
            self._handle.remove()
            self.__dict__["_handle"] = None

    def _generator(self, device: torch.device, seed: Optional[int]) -> torch.Generator:
        from maskkit.views.generators import rank_generator

        if seed is not None:
            return rank_generator(seed, device)
        key = str(device)
        if key not in self._generators:
            self._generators[key] = rank_generator(self.seed, device)
        return self._generators[key]

    @contextlib.contextmanager
    def generator_state(self, device: torch.device | str = "cpu") -> Iterator[None]:
        """Run the body, then rewind the method's generator so the next forward replays the same draws."""
        generator = self._generator(torch.device(device), None)
        state = generator.get_state()
        try:
            yield
        finally:
            generator.set_state(state)

    def _autocast(self, device: torch.device):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    @contextlib.contextmanager
    def _selector_off(self) -> Iterator[None]:
        selector = self.selector
        if selector is None:
            yield
            return
        training = selector.training
        selector.training = False
        eval_ratio, selector.eval_keep_ratio = selector.eval_keep_ratio, None
        try:
            yield
        finally:
            selector.training, selector.eval_keep_ratio = training, eval_ratio

    @contextlib.contextmanager
    def _selector_grid(self, grid: tuple[int, int]) -> Iterator[None]:
        """Point the selector at a view's grid, which differs from the host's for resized views."""
        selector = self.selector
        if selector is None:
            yield
            return
        previous, selector.grid = selector.grid, tuple(grid)
        try:
            yield
        finally:
            selector.grid = previous

    def _teacher_pass(self, views):
        """Run the teacher on the teacher view; return (TeacherOutput, teacher box, head outputs) or None."""
        runner = self._runner
        if runner is None:
            return None
        index = views.teacher_index
        if index is None:
            index = views.index(self.masked_views[0]) if self.masked_views else 0
        with torch.no_grad():
            out = runner.run_teacher(views.views[index])
            heads = {name: head(out.pooled) for name, head in self.teacher.heads.items()} if self.teacher else {}
        return out, views.boxes[index], heads

    def forward(self, images: torch.Tensor, texts: torch.Tensor, *, seed: Optional[int] = None) -> dict:
        """Run one training step's forward.

        Args:
            images: (B, 3, H, W) uint8 or [0, 1] float images (see the view generator).
            texts: (B, T) token ids.
            seed: replay key: the same seed gives the same views and masks (open_clip's
                accum-freq runs each micro-batch twice). None draws from the method's
                own generator, which advances every step.

        Returns:
            dict of weighted ``loss_*`` tensors (summing to the total) and detached statistics.
        """
        outputs, stats = self.forward_outputs(images, texts, seed=seed)
        result: dict[str, torch.Tensor] = {}
        for objective in self.objectives.values():
            for key, value in objective(outputs).items():
                result[key] = value if key.startswith("loss_") else value.detach()
        if self.scorer is not None:
            result.update(self.scorer.auxiliary_loss())
        result.update(stats)
        return result

    def forward_outputs(self, images: torch.Tensor, texts: torch.Tensor, *,
                        seed: Optional[int] = None) -> tuple[dict, dict]:
        """Run views, teacher and tower passes without the objectives.

        Returns:
            ``(outputs, stats)``: the objectives' input dict (see
            :mod:`maskkit.losses.outputs`; every tensor except ``logit_scale`` is
            batch-first) and detached statistics. Callers that run the
            objectives elsewhere (the open_clip launcher's loss) use this.
        """
        from maskkit.towers import find_vision_tower, forward_pooled, tower_grid
        from maskkit.views.warp import warp_scores

        device = images.device
        generator = self._generator(device, seed)
        if self.selector is not None:
            self.selector.generator = generator
        views = self.view_generator(images, generator)
        stats: dict[str, torch.Tensor] = {}

        warm = self.step < self.teacher_warmup_steps
        tower = find_vision_tower(self.model)
        image_features, pooled = {}, {}
        with self._autocast(device):
            teacher = self._teacher_pass(views)
            for index, (name, view) in enumerate(zip(views.names, views.views)):
                if index == views.teacher_index:
                    continue
                masked = name in self.masked_views and self.selector is not None
                grid = tower_grid(tower, tuple(view.shape[-2:]))
                scores = None
                if masked and warm:
                    scores = torch.rand(view.shape[0], grid[0] * grid[1], generator=generator, device=device)
                elif masked and teacher is not None:
                    out, teacher_box, _ = teacher
                    scores = warp_scores(out.scores.float(), out.grid, teacher_box, views.boxes[index], grid,
                                         flip=views.flipped[index])
                    if self.selector.scorer is not None:
                        # A token scorer (learned) still selects; the teacher's map only supervises it.
                        self.scorer.set_target(scores)
                        scores = None
                if not masked:
                    context = self._selector_off()
                elif scores is not None:
                    context = self.selector.use_scores(scores)
                else:
                    context = contextlib.nullcontext()
                with context, self._selector_grid(grid):
                    projected, pooled[name] = forward_pooled(tower, view)
                image_features[name] = F.normalize(projected.float(), dim=-1)
                pooled[name] = pooled[name].float()
                keep_idx = self.selector.keep_idx if masked else None
                count = grid[0] * grid[1] if keep_idx is None else keep_idx.shape[1]
                stats[f"tokens_{name}"] = torch.tensor(float(count), device=device)
            text_features = F.normalize(self.model.encode_text(texts).float(), dim=-1)

        logit_scale = self.model.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp().float()
        outputs = {"image_features": image_features, "text_features": text_features,
                   "logit_scale": logit_scale, "pooled": pooled,
                   "teacher_outputs": {} if teacher is None else {k: v.float() for k, v in teacher[2].items()}}
        if teacher is not None:
            stats["teacher_entropy"] = score_entropy(teacher[0].scores.float()).detach()
        if self.teacher is not None:
            stats["ema_decay"] = torch.tensor(float(self.teacher.decay(self.step)), device=device)
        stats["logit_scale"] = logit_scale.detach()
        return outputs, stats

    def update_teacher(self, step: Optional[int] = None) -> None:
        """Move the EMA teacher towards the student; call once after each optimizer step.

        Args:
            step: index of the optimizer step just taken (0 for the first); None
                uses the method's own counter. The warm-up clock moves to ``step + 1``.
        """
        step = self.step if step is None else int(step)
        if self.teacher is not None:
            self.teacher.update(step)
        self.step = step + 1

    def extra_state_dict(self) -> dict:
        """maskkit's own state (teacher, heads, learned scorer, step): tensors and plain values only."""
        state: dict[str, Any] = {"step": int(self.step), "seed": self.seed,
                                 "objectives": _plain(self.objectives.state_dict())}
        if self.teacher is not None:
            state["teacher"] = _plain(self.teacher.state_dict())
        scorer_state = _scorer_state(self.scorer, self.teacher)
        if scorer_state:
            state["scorer"] = scorer_state
        return state

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`extra_state_dict` returned (strict about the modules it names)."""
        self.step = int(state.get("step", 0))
        self.objectives.load_state_dict(state["objectives"])
        if self.teacher is not None:
            if "teacher" not in state:
                raise KeyError("extra state has no 'teacher' entry but this method has an EMA teacher")
            self.teacher.load_state_dict(state["teacher"])
        if "scorer" in state and self.scorer is not None:
            self.scorer.load_state_dict(state["scorer"], strict=False)


def score_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Mean entropy of (B, N) non-negative scores as distributions, divided by log N (1 = uniform)."""
    probs = scores.clamp_min(0) / scores.clamp_min(0).sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return entropy.mean() / math.log(max(scores.shape[-1], 2))


def _plain(state: Mapping[str, Any]) -> dict:
    return {key: value.detach().clone() if torch.is_tensor(value) else value for key, value in state.items()}


def _scorer_state(scorer: Optional[nn.Module], teacher: Optional[nn.Module]) -> dict:
    """Scorer parameters and buffers, without the tensors it shares with the teacher."""
    if scorer is None:
        return {}
    shared = set() if teacher is None else {value.data_ptr() for value in teacher.state_dict().values()}
    own = {key: value for key, value in scorer.state_dict().items() if value.data_ptr() not in shared}
    return _plain(own)


def _merge_objectives(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """Merge per-objective options; a None value removes that objective."""
    merged = {name: dict(options) for name, options in base.items()}
    for name, options in override.items():
        if options is None:
            merged.pop(name, None)
        elif name in merged:
            merged[name].update(options)
        else:
            merged[name] = dict(options)
    return merged


def _accepted(factory: Any, options: Mapping[str, Any]) -> dict:
    """Select the entries of ``options`` that ``factory`` accepts as keyword arguments."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if any(item.kind is inspect.Parameter.VAR_KEYWORD for item in parameters.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in parameters}


def _spec_type(spec: Any) -> Any:
    return spec.get("type") if isinstance(spec, Mapping) else spec


def _teacher_pixels(resolution: Any, image_size: int, patch_size: int) -> Optional[int]:
    """Teacher input side in pixels: an int as is, a float in (0, 1] as a fraction of the input."""
    if resolution is None:
        return None
    if isinstance(resolution, float):
        if not 0.0 < resolution <= 1.0:
            raise ValueError(f"teacher_resolution as a fraction must be in (0, 1], got {resolution!r}")
        return max(patch_size, round(image_size * resolution / patch_size) * patch_size)
    if not isinstance(resolution, int) or resolution < patch_size or resolution % patch_size:
        raise ValueError(f"teacher_resolution must be a multiple of the patch size {patch_size} in pixels, "
                         f"or a fraction in (0, 1], got {resolution!r}")
    return resolution


def _freeze_patch_embed(tower: nn.Module) -> None:
    embed = getattr(tower, "conv1", None)
    if embed is None:
        trunk = getattr(tower, "trunk", tower)
        embed = getattr(getattr(trunk, "patch_embed", None), "proj", None)
    if embed is None:
        raise TypeError(f"freeze_patch_embed: no patch embedding (conv1 or patch_embed.proj) on "
                        f"{type(tower).__name__}")
    embed.requires_grad_(False)


def build_method(preset: str | Mapping[str, Any], model: nn.Module, *, total_steps: Optional[int] = None,
                 **overrides) -> MaskedContrastiveCLIP:
    """Compose a :class:`MaskedContrastiveCLIP` from a preset and a host model.

    Args:
        preset: a name from :func:`maskkit.list_presets` or a preset dict.
        model: an open_clip CLIP (or any model with ``encode_image``,
            ``encode_text``, ``logit_scale`` and a vision tower
            :func:`maskkit.attach` supports). The method takes it over: the
            selector is attached to it.
        total_steps: optimizer steps of the run, for the EMA schedule; required
            when the preset has a teacher.
        **overrides: any preset key (see :mod:`maskkit.presets`) replaces the
            preset's value. ``objectives`` merges per objective, and a None entry
            drops that objective. The other options are:

            - ``precision``: "fp32", "bf16" or "fp16", the autocast dtype of the
              tower passes. Losses run in float32, and fp16 needs a GradScaler
              in the training loop.
            - ``start_decay``, ``end_decay``: EMA schedule ends. "auto" scales
              the preset's start decay to ``total_steps``
              (:func:`maskkit.ema.scaled_start_decay`).
            - ``teacher_warmup_steps``: S, random selection before step S.
            - ``seed``: seed of the views and the selection, offset per rank.
            - ``eval_keep_ratio``: keep ratio of masked inference in eval mode.
            - ``local_loss``, ``gather_with_grad``: passed to the InfoNCE objective.
            - ``head_norm`` ("batch" or "layer"), ``head_hidden_dim``,
              ``head_out_dim``: SimCLR and BYOL head settings.
            - ``strategy``, ``random_fraction``: selector settings (see
              :class:`~maskkit.TokenSelector`).
    """
    from maskkit.ema import EMATeacher
    from maskkit.hosting import attach
    from maskkit.registry import OBJECTIVES, SCORERS, VIEW_GENERATORS, build_view_generator
    from maskkit.tokens import TokenSelector
    from maskkit.towers import find_vision_tower, tower_image_size, tower_patch_size, tower_width

    unknown = set(overrides) - OVERRIDES - PRESET_KEYS
    if unknown:
        raise TypeError(f"unknown build_method options {sorted(unknown)}; valid: {sorted(OVERRIDES | PRESET_KEYS)}")
    spec = resolve_preset(preset)
    if "objectives" in overrides:
        overrides = dict(overrides)
        spec["objectives"] = _merge_objectives(spec["objectives"], overrides.pop("objectives") or {})
    spec.update(overrides)
    unknown = set(spec) - OVERRIDES - PRESET_KEYS
    if unknown:
        raise ValueError(f"preset has unknown keys {sorted(unknown)}; valid: {sorted(OVERRIDES | PRESET_KEYS)}")
    precision = spec.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")

    tower = find_vision_tower(model)
    width = tower_width(tower)
    image_size = tower_image_size(tower)
    patch = tower_patch_size(tower)[0]

    views_spec = spec["views"]
    views_spec = {"type": views_spec} if isinstance(views_spec, str) else dict(views_spec)
    views_spec.setdefault("output_size", image_size)
    teacher_pixels = _teacher_pixels(spec.get("teacher_resolution"), image_size[0], patch)
    view_factory = VIEW_GENERATORS.get(views_spec["type"]) if isinstance(views_spec["type"], str) else None
    if teacher_pixels is not None and "teacher_size" in _accepted(view_factory, {"teacher_size": None}):
        # Render the teacher view at its final size rather than resizing a full-size one.
        views_spec.setdefault("teacher_size", teacher_pixels)
    view_generator = build_view_generator(views_spec)

    head_options = {"in_dim": width, "norm": spec.get("head_norm"), "hidden_dim": spec.get("head_hidden_dim"),
                    "out_dim": spec.get("head_out_dim"), "local_loss": spec.get("local_loss"),
                    "gather_with_grad": spec.get("gather_with_grad")}
    head_options = {key: value for key, value in head_options.items() if value is not None}
    objectives = nn.ModuleDict()
    for name, options in spec["objectives"].items():
        factory = OBJECTIVES.get(name)
        objectives[name] = factory(**{**_accepted(factory, head_options), **options})

    scorer_spec = spec.get("scorer")
    scorer_class = None if scorer_spec is None else (
        SCORERS.get(_spec_type(scorer_spec)) if isinstance(_spec_type(scorer_spec), str) else None)
    requires = set(getattr(scorer_class or scorer_spec, "requires", ())) if scorer_spec is not None else set()
    ema_heads = {}
    for objective in objectives.values():
        if hasattr(objective, "ema_heads"):
            ema_heads.update(objective.ema_heads())
    needs_teacher = "teacher_view" in requires or bool(ema_heads)

    if spec.get("freeze_patch_embed"):
        _freeze_patch_embed(tower)

    teacher = None
    if needs_teacher:
        if total_steps is None:
            raise ValueError(f"total_steps is required: preset {_spec_type(preset)!r} has an EMA teacher "
                             "whose decay schedule spans the run")
        ema = dict(spec.get("ema") or {})
        start = spec.get("start_decay", ema.get("start_decay", 0.996))
        end = spec.get("end_decay", ema.get("end_decay", 1.0))
        if start == "auto":
            from maskkit.ema import scaled_start_decay

            start = scaled_start_decay(ema.get("start_decay", 0.996), total_steps)
        # Deep-copied here, before the selector is attached, so the teacher never contains one.
        teacher = EMATeacher(tower, heads=ema_heads or None, total_steps=total_steps, start_decay=start,
                             end_decay=end)

    runner = None
    scorer = None
    if scorer_spec is not None:
        if "teacher_view" in requires:
            extra = {"teacher": teacher, "teacher_resolution": teacher_pixels}
        else:
            extra = _accepted(scorer_class, {"dim": width}) if scorer_class is not None else {}
            if isinstance(scorer_spec, Mapping):
                extra = {key: value for key, value in extra.items() if key not in scorer_spec}
        scorer = SCORERS.build(scorer_spec, **extra)
        if "teacher_view" in requires:
            runner = scorer
    if runner is None and teacher is not None:
        runner = SCORERS.build("ema_attention", teacher=teacher, teacher_resolution=teacher_pixels)

    selector = handle = None
    masked = ()
    if scorer is not None:
        keep_ratio = float(spec.get("keep_ratio") or 1.0)
        token_scorer = scorer if "teacher_view" not in requires else None
        selector = TokenSelector(keep_ratio=keep_ratio, block_size=int(spec.get("block_size") or 1),
                                 scorer=token_scorer, eval_keep_ratio=spec.get("eval_keep_ratio"),
                                 strategy=spec.get("strategy", "topk"),
                                 random_fraction=spec.get("random_fraction", 0.0),
                                 # The finiteness check reads a flag back from the device every step.
                                 check_finite=False)
        handle = attach(model, selector)
        masked = spec.get("masked_views", "all")
        if masked == "all":
            names = _view_names(view_generator, image_size)
            masked = tuple(name for name in names if name != "teacher")
    method = MaskedContrastiveCLIP(model, preset=spec, view_generator=view_generator, objectives=objectives,
                                   selector=selector, handle=handle, scorer=scorer, teacher_runner=runner,
                                   teacher=teacher, masked_views=masked, precision=precision,
                                   teacher_warmup_steps=int(spec.get("teacher_warmup_steps") or 0),
                                   seed=int(spec.get("seed") or 0))
    logger.info("built method: views=%s masked=%s scorer=%s objectives=%s teacher=%s",
                _spec_type(views_spec), masked, _spec_type(scorer_spec), list(objectives), teacher is not None)
    return method


def _view_names(view_generator: nn.Module, image_size: tuple[int, int]) -> tuple[str, ...]:
    """View names of a generator, found by running it once on a blank image."""
    with torch.no_grad():
        views = view_generator(torch.zeros(1, 3, *image_size), torch.Generator().manual_seed(0))
    return tuple(name for index, name in enumerate(views.names) if index != views.teacher_index)
