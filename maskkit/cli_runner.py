"""MMEngine runs behind ``maskkit train`` and ``maskkit eval``.

The recipe's config is built into an MMEngine ``Runner``; this module adds a
tqdm progress bar over training iterations, reads the ``metrics.json`` that
the recipe's metrics writer leaves in the work dir, and points evaluation at a
user's CSV file or webdataset shards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from maskkit.cli_config import check_data_paths, drop_unset_validation, load_recipe_config

__all__ = ["METRICS_FILE", "train", "evaluate", "read_metrics"]

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
            if is_main_process():
                self.bar = tqdm(total=runner.max_iters, initial=runner.iter, unit="it", desc="train",
                                dynamic_ncols=True, disable=None)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if self.bar is None:
                return
            self.bar.update(1)
            # Reading the loss syncs with the device, so do it only when the bar redraws.
            if outputs and self.bar.n % max(1, runner.log_processor.window_size) == 0:
                loss = sum(float(value) for key, value in outputs.items() if "loss" in key)
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        def after_train(self, runner) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainProgressHook()


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


def _build_runner(cfg):
    from mmengine.runner import Runner

    import maskkit.integrations.mmengine  # noqa: F401  registers the "maskkit" scope

    try:
        return Runner.from_cfg(cfg)
    except KeyError as error:  # MMEngine's "X is not in the registry" messages
        raise _usage_error(f"invalid recipe entry: {error.args[0] if error.args else error}") from error


def train(recipe: str, work_dir: Path | None = None, cfg_options: Sequence[str] = (), launcher: str = "none",
          resume: bool = False) -> dict[str, Any] | None:
    """Train ``recipe`` with MMEngine and return the metrics it wrote (None on ranks other than 0)."""
    from mmengine.dist import is_main_process
    from mmengine.logging import MMLogger
    from tqdm.contrib.logging import logging_redirect_tqdm

    cfg, _ = load_recipe_config(recipe, cfg_options, work_dir)
    drop_unset_validation(cfg)
    check_data_paths(cfg)
    cfg.launcher = launcher
    if resume:
        # The files in the work dir were written by this command, so loading them fully is safe.
        from maskkit.integrations.mmengine.compat import set_trust_checkpoints

        set_trust_checkpoints(True)
        cfg.resume = True
        cfg.load_from = None
    _prepare_distributed(cfg, launcher)

    runner = _build_runner(cfg)
    runner.register_hook(_progress_hook())
    with logging_redirect_tqdm(loggers=[MMLogger.get_current_instance(), logging.getLogger("maskkit")]):
        runner.train()
    if not is_main_process():
        return None
    metrics = read_metrics(cfg.work_dir)
    if metrics is None:
        logger.warning("the recipe wrote no %s in %s", METRICS_FILE, cfg.work_dir)
    return metrics


def _eval_dataset(data: Path, classnames: Path | None, templates: Path | None, base: dict) -> dict:
    """Build the dataset config for a user CSV file or webdataset shard pattern."""
    text = str(data)
    image_size = base.get("image_size", 224)
    if text.endswith((".csv", ".tsv")):
        if not data.is_file():
            raise _usage_error(f"--data: CSV file not found: {data}")
        separator = "\t" if text.endswith(".tsv") else ","
        return dict(type="CsvImageTextDataset", path=text, separator=separator, image_size=image_size)
    if ".tar" in text:
        return dict(type="WebDatasetImageText", shards=text, image_size=image_size)
    raise _usage_error(f"--data {data}: expected a .csv/.tsv file or a webdataset shard pattern ending in .tar, "
                       "for example /data/val-{000000..000003}.tar")


def _read_lines(path: Path | None, option: str) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise _usage_error(f"{option}: file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise _usage_error(f"{option}: {path} holds no non-empty lines")
    return lines


def evaluate(recipe: str, checkpoint: Path, work_dir: Path | None = None, cfg_options: Sequence[str] = (),
             data: Path | None = None, classnames: Path | None = None,
             templates: Path | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` with the recipe's metrics, on its validation data or on ``data``."""
    if not checkpoint.is_file():
        raise _usage_error(f"checkpoint not found: {checkpoint}")
    cfg, name = load_recipe_config(recipe, cfg_options, work_dir or Path("work_dirs") / f"{name_of(recipe)}_eval")
    names = _read_lines(classnames, "--classnames")
    prompts = _read_lines(templates, "--templates")
    if prompts is not None and not all("{}" in prompt for prompt in prompts):
        raise _usage_error(f"--templates: every line of {templates} must contain '{{}}' for the class name")

    if data is not None:
        loader = cfg.val_dataloader[0] if isinstance(cfg.val_dataloader, (list, tuple)) else cfg.val_dataloader
        loader.dataset = _eval_dataset(data, classnames, templates, dict(loader.dataset))
        cfg.val_dataloader = loader
        evaluator = cfg.val_evaluator[0] if isinstance(cfg.val_evaluator, (list, tuple)) else cfg.val_evaluator
        cfg.val_evaluator = evaluator
    check_data_paths(cfg, ("val_dataloader",))
    evaluator = cfg.val_evaluator
    for metric in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
        if names is not None:
            metric["classnames"] = names
        elif data is not None:
            metric["classnames"] = None
        if prompts is not None:
            metric["templates"] = prompts

    cfg.load_from = str(checkpoint)
    cfg.resume = False
    runner = _build_runner(cfg)
    metrics = runner.val()
    return {key: value for key, value in (metrics or {}).items()}


def name_of(recipe: str) -> str:
    """Return the file stem a recipe name or path refers to."""
    return Path(recipe).stem
