"""The MMEngine run behind ``maskkit train``.

The recipe's config is built into an MMEngine ``Runner``. This module adds a
tqdm progress bar over training iterations and then reads the
``metrics.json`` that the recipe's ``MetricsJSONHook`` writes to the work dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from maskkit.cli_config import check_data_paths, check_dataloader_keys, drop_unset_validation, load_recipe_config

__all__ = ["METRICS_FILE", "train", "read_metrics", "build_runner"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def _usage_error(message: str) -> Exception:
    from maskkit.cli import UsageError

    return UsageError(message)


def _progress_hook():
    """Build a hook that shows a tqdm bar over training iterations on rank 0."""
    from mmengine.dist import is_main_process
    from mmengine.hooks import Hook
    from tqdm import tqdm

    class TrainProgressHook(Hook):
        priority = "VERY_LOW"

        def __init__(self):
            self.bar = None

        def before_train(self, runner) -> None:
            if not is_main_process():
                return
            # disable=None turns the bar off when stderr is not a terminal (logs, CI).
            bar = tqdm(total=runner.max_iters, initial=runner.iter, unit="it", desc="train",
                       dynamic_ncols=True, disable=None)
            if bar.disable:
                bar.close()
            else:
                self.bar = bar

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if self.bar is None:
                return
            self.bar.update(1)
            # Reading the loss syncs with the device, so do it only when the bar redraws.
            loss = (outputs or {}).get("loss")
            if loss is not None and self.bar.n % max(1, runner.log_processor.window_size) == 0:
                self.bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)

        def after_train(self, runner) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainProgressHook()


class _TqdmWriteHandler(logging.StreamHandler):
    """A console handler that prints through ``tqdm.write``, so log lines appear above the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # a failed log write must not stop training; handleError reports it
            self.handleError(record)


@contextlib.contextmanager
def _logs_above_progress_bar(loggers: Sequence[logging.Logger]) -> Iterator[None]:
    """Route the console handlers of ``loggers`` through tqdm, keeping their levels and formats."""
    replaced = []
    for target in loggers:
        for index, handler in enumerate(target.handlers):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
                substitute = _TqdmWriteHandler(handler.stream)
                substitute.setLevel(handler.level)
                substitute.setFormatter(handler.formatter)
                for log_filter in handler.filters:
                    substitute.addFilter(log_filter)
                target.handlers[index] = substitute
                replaced.append((target, index, handler))
    try:
        yield
    finally:
        for target, index, handler in replaced:
            target.handlers[index] = handler


def _prepare_distributed(cfg, launcher: str) -> None:
    """Start the process group for ``--launcher pytorch`` and pick the matching DDP wrapper.

    MMEngine 0.10.7 cannot start a CPU-only run itself (it calls
    ``torch.cuda.set_device``), so the group is started here before the Runner
    is built; MMEngine then finds it initialised.
    """
    if launcher == "none":
        return
    from maskkit.integrations.mmengine.dist import ddp_wrapper_cfg, init_distributed

    if launcher == "pytorch":
        try:
            init_distributed()
        except RuntimeError as error:
            raise _usage_error(str(error)) from error
    cfg.setdefault("model_wrapper_cfg", ddp_wrapper_cfg())


def read_metrics(work_dir: str | Path) -> dict[str, Any] | None:
    """Return the metrics dict in ``work_dir/metrics.json``, or None when it is absent."""
    path = Path(work_dir) / METRICS_FILE
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def build_runner(cfg):
    """Build an MMEngine Runner from ``cfg``; registry lookup failures become usage errors."""
    from mmengine.runner import Runner

    import maskkit.integrations.mmengine  # noqa: F401  registers the "maskkit" scope

    try:
        return Runner.from_cfg(cfg)
    except KeyError as error:  # MMEngine's "X is not in the registry" messages
        raise _usage_error(f"invalid recipe entry: {error.args[0] if error.args else error}") from error
    except (TypeError, ValueError) as error:  # a misspelled or out-of-range option of the model or a hook
        raise _usage_error(f"invalid recipe entry: {error}") from error


def train(recipe: str, work_dir: Path | None = None, cfg_options: Sequence[str] = (), launcher: str = "none",
          resume: bool = False) -> dict[str, Any] | None:
    """Train ``recipe`` with MMEngine and return the metrics it wrote (None on ranks other than 0)."""
    from mmengine.dist import is_main_process
    from mmengine.logging import MMLogger

    cfg, _ = load_recipe_config(recipe, cfg_options, work_dir)
    drop_unset_validation(cfg)
    check_dataloader_keys(cfg)
    check_data_paths(cfg)
    cfg.launcher = launcher
    if resume:
        # Checkpoints saved with RNGStateHook hold tensors and plain values only, so they load
        # with weights_only=True; others need MASKKIT_TRUST_CHECKPOINTS=1 (see the compat module).
        cfg.resume = True
        cfg.load_from = None
    _prepare_distributed(cfg, launcher)

    runner = build_runner(cfg)
    runner.register_hook(_progress_hook())
    with _logs_above_progress_bar([MMLogger.get_current_instance(), logging.getLogger()]):
        runner.train()
    if not is_main_process():
        return None
    metrics = read_metrics(cfg.work_dir)
    if metrics is None:
        logger.warning("the recipe wrote no %s in %s", METRICS_FILE, cfg.work_dir)
    return metrics
