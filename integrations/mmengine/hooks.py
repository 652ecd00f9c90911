"""MMEngine hooks: EMA-teacher updates, RNG state in checkpoints, and the metrics file.

Add all three with ``custom_hooks=maskkit_hooks()`` (see :func:`maskkit_hooks`).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from . import compat
from .registry import HOOKS

__all__ = ["TeacherUpdateHook", "RNGStateHook", "ResumeRNGHook", "MetricsJSONHook", "maskkit_hooks",
           "find_generators", "unwrap_method", "METRICS_FILE"]

METRICS_FILE = "metrics.json"
_RNG_KEY = "maskkit_rng"
_CLOCK_KEY = "maskkit_train_seconds"
_SKIPPED_KEY = "maskkit_skipped_samples"


def unwrap_method(model: torch.nn.Module) -> torch.nn.Module:
    """Return the maskkit method inside an MMEngine model, DDP-wrapped or not."""
    if is_model_wrapper(model):
        model = model.module
    method = getattr(model, "method", None)
    if method is None:
        raise TypeError(f"expected a MaskKitCLIP-like model with a 'method' attribute, got {type(model).__name__}")
    return method


def find_generators(method: torch.nn.Module, devices: list[str] | None = None) -> dict[str, torch.Generator]:
    """Collect the method's ``torch.Generator`` objects by name: module attributes and per-device ones.

    ``MaskedContrastiveCLIP`` creates one generator per device on first use and
    keeps them in ``_generators``; names of those are ``"device:<device>"``.
    ``devices`` creates the per-device generators that do not exist yet, so a
    resumed run can restore them before its first forward.
    """
    found = {}
    for prefix, submodule in method.named_modules():
        for attribute, value in vars(submodule).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{attribute}" if prefix else attribute] = value
    make = getattr(method, "_generator", None)
    for device in devices or []:
        if make is not None:
            make(torch.device(device), None)
    for device, generator in (getattr(method, "_generators", None) or {}).items():
        found[f"device:{device}"] = generator
    return found


def total_optimizer_steps(runner) -> int:
    """Optimizer steps of the whole run: train iterations divided by gradient-accumulation counts, rounded up."""
    accumulation = int(getattr(runner.optim_wrapper, "_accumulative_counts", 1) or 1)
    return math.ceil(runner.max_iters / accumulation)


@HOOKS.register_module(force=True)
class TeacherUpdateHook(Hook):
    """Call ``method.update_teacher(step)`` once per optimizer step.

    With ``optim_wrapper=dict(accumulative_counts=N)`` the wrapper steps every
    N-th iteration (and on the last one), and the teacher follows it. ``step`` is
    the zero-based index of the optimizer step just taken. Before training, a
    method built without ``total_steps`` gets the run's optimizer-step count for
    its EMA schedule. Runs before ``CheckpointHook`` so saved teachers are current.
    """

    priority = "ABOVE_NORMAL"

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        method = unwrap_method(model)
        total = total_optimizer_steps(runner)
        if runner.iter > 0 and hasattr(method, "step"):
            # A resumed run: the method's step counter (teacher warm-up, EMA decay) is not in the checkpoint.
            accumulation = int(getattr(runner.optim_wrapper, "_accumulative_counts", 1) or 1)
            method.step = math.ceil(runner.iter / accumulation)
        current = getattr(model, "total_steps", None)
        if current is None:
            model.set_total_steps(total)
            runner.logger.info(f"EMA teacher schedule set to {total} optimizer steps")
        elif current != total:
            runner.logger.warning(
                f"model total_steps={current} differs from the train loop's {total} optimizer steps; "
                "the EMA schedule keeps total_steps from the model config"
            )

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        wrapper = runner.optim_wrapper
        should_update = getattr(wrapper, "should_update", None)
        if should_update is not None and not should_update():
            return
        accumulation = int(getattr(wrapper, "_accumulative_counts", 1) or 1)
        inner_count = int(getattr(wrapper, "_inner_count", runner.iter + 1))
        step = math.ceil(inner_count / accumulation) - 1
        unwrap_method(runner.model).update_teacher(step)


@HOOKS.register_module(force=True)
class RNGStateHook(Hook):
    """Save and restore RNG states in checkpoints and make checkpoints load with ``weights_only=True``.

    Before a checkpoint is saved, stores Python, numpy, torch (CPU, CUDA) and the
    method's ``torch.Generator`` states under ``"maskkit_rng"`` and rewrites
    MMEngine's message-hub buffers into tensors (:func:`compat.to_safe_checkpoint`).
    On resume, restores the states just before the first resumed iteration, after
    MMEngine has re-seeded and advanced the data loader. A checkpoint loaded
    with ``load_from`` (no resume) leaves RNG states alone.

    A config key ``trust_checkpoints=True`` lets this run load checkpoints that
    need ``weights_only=False`` (see :mod:`compat`).

    NOTE: only rank 0 saves checkpoints, so only rank 0 restores its states.
    Other ranks keep their seeded states, so runs resumed with several ranks
    are not bit-exact replays.
    """

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trust_set = False

    def before_run(self, runner) -> None:
        if bool(runner.cfg.get("trust_checkpoints", False)):
            compat.set_trust_checkpoints(True)
            self._trust_set = True

    def after_run(self, runner) -> None:
        if self._trust_set:
            compat.set_trust_checkpoints(None)
            self._trust_set = False

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[_RNG_KEY] = compat.capture_rng_state(find_generators(unwrap_method(runner.model)))
        compat.to_safe_checkpoint(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        compat.from_safe_checkpoint(checkpoint)
        if getattr(runner, "_resume", False) and _RNG_KEY in checkpoint:
            self._pending = checkpoint[_RNG_KEY]

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        from mmengine.dist import get_rank

        if get_rank() != 0:
            return
        devices = [name[len("device:"):] for name in state.get("generators", {}) if name.startswith("device:")]
        compat.restore_rng_state(state, find_generators(unwrap_method(runner.model), devices))
        runner.logger.info(f"restored RNG states saved at iteration {runner.iter}")


ResumeRNGHook = RNGStateHook
HOOKS.register_module(name="ResumeRNGHook", module=RNGStateHook, force=True)


@HOOKS.register_module(force=True)
class MetricsJSONHook(Hook):
    """Write ``<work_dir>/metrics.json`` after every validation (rank 0 only).

    The file is one flat JSON object: the validation metrics as the validation
    loop returns them (``zeroshot_top1``, ``zeroshot_top5``, ``i2t_r1`` ...
    ``t2i_r10``, ``object_patch_kept`` for the first set, ``"<set name>/<key>"``
    for the others, see ``MultiValLoop``), plus ``iterations`` (train iterations
    done), ``train_seconds`` (wall time of training, validation excluded) and
    ``skipped_samples`` (training samples the data reader dropped, all ranks).
    Both totals continue across a resume because they are kept in the message
    hub, which checkpoints store.

    NOTE: only rank 0's message hub is saved, so after a resume with several
    ranks every rank restarts its skip count from rank 0's, an estimate.
    The file is replaced atomically, so a reader never sees half of it.

    Args:
        filename: file name inside the work dir, or an absolute path.
    """

    priority = "BELOW_NORMAL"

    def __init__(self, filename: str = METRICS_FILE) -> None:
        self.filename = filename
        self._train_seconds = 0.0
        self._started: float | None = None
        self._training = False
        self._skipped_offset = 0

    def _path(self, runner) -> str:
        return self.filename if os.path.isabs(self.filename) else os.path.join(runner.work_dir, self.filename)

    def before_train(self, runner) -> None:
        self._training = True
        # A resumed run continues the clock from the checkpoint's message hub.
        self._train_seconds = float(runner.message_hub.get_info(_CLOCK_KEY, 0.0))
        self._skipped_offset = int(runner.message_hub.get_info(_SKIPPED_KEY, 0))
        self._started = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        elapsed = self._train_seconds
        if self._started is not None:
            elapsed += time.perf_counter() - self._started
        runner.message_hub.update_info(_CLOCK_KEY, elapsed)
        runner.message_hub.update_info(_SKIPPED_KEY, self._skipped_offset + _local_skipped(runner))

    def before_val(self, runner) -> None:
        self._pause()

    def after_val(self, runner) -> None:
        if self._training:
            self._started = time.perf_counter()

    def after_train(self, runner) -> None:
        self._pause()
        self._training = False

    def _pause(self) -> None:
        if self._started is not None:
            self._train_seconds += time.perf_counter() - self._started
            self._started = None

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        skipped = _skipped_total(runner, self._skipped_offset)
        from mmengine.dist import is_main_process

        if not is_main_process():
            return
        record = {key: _plain(value) for key, value in (metrics or {}).items()}
        # Percentages computed in float32 carry noise such as 0.4999999888; four decimals keep every real digit.
        record = {key: round(value, 4) if isinstance(value, float) else value for key, value in record.items()}
        record.update(iterations=int(runner.iter), train_seconds=round(self._train_seconds, 3),
                      skipped_samples=skipped)
        path = self._path(runner)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temp_path = f"{path}.tmp"
        with open(temp_path, "w", encoding="utf-8") as file:
            json.dump(record, file, indent=2, sort_keys=True)
        os.replace(temp_path, path)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _local_skipped(runner) -> int:
    """Training samples this process's data preprocessor has seen dropped."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    preprocessor = getattr(model, "data_preprocessor", None)
    return int(sum(getattr(preprocessor, "skipped_samples", {}).values()))


def _skipped_total(runner, offset: int = 0) -> int:
    """Skipped training samples summed over ranks, plus each rank's resumed ``offset`` (collective under DDP)."""
    count = offset + _local_skipped(runner)
    from mmengine.dist import all_reduce, get_world_size

    if get_world_size() > 1:
        total = torch.tensor(float(count))
        all_reduce(total)
        count = int(total.item())
    return int(count)


def maskkit_hooks(metrics_file: str = METRICS_FILE) -> list[dict]:
    """``custom_hooks`` entries for a maskkit run: teacher updates, RNG state, metrics file."""
    return [
        dict(type="TeacherUpdateHook"),
        dict(type="RNGStateHook"),
        dict(type="MetricsJSONHook", filename=metrics_file),
    ]
