"""``maskkit eval``: the recipe's metrics for a checkpoint, on its own or the user's data.

Retrieval recall is always computed. Zero-shot accuracy needs class names:
the recipe's data sets carry them; for ``--data`` they come from
``--classnames``, and a CSV file then needs a label column.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from maskkit.cli_config import check_data_paths, load_recipe_config
from maskkit.cli_runner import build_runner

__all__ = ["evaluate", "csv_dataset_cfg"]

logger = logging.getLogger(__name__)

# Column names tried, in order, when reading a user's CSV/TSV header.
IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "filename")
CAPTION_COLUMNS = ("title", "caption", "text")
LABEL_COLUMNS = ("label", "class", "cls")


def _usage_error(message: str) -> Exception:
    from maskkit.cli import UsageError

    return UsageError(message)


def _read_lines(path: Path | None, option: str) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise _usage_error(f"{option}: file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise _usage_error(f"{option}: {path} has no non-empty lines")
    return lines


def _pick(columns: Sequence[str], candidates: Sequence[str], what: str, path: Path, required: bool = True):
    for name in candidates:
        if name in columns:
            return name
    if required:
        raise _usage_error(f"--data {path}: no {what} column; expected one of {', '.join(candidates)}, "
                           f"found {', '.join(columns) or '(no header)'}")
    return None


def csv_dataset_cfg(path: Path, image_size: int, classes: Sequence[str] | None) -> dict:
    """Dataset config of ``CsvImageText`` for a user CSV (``,``) or TSV (tab) file with a header row."""
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8") as handle:
        columns = next(csv.reader(handle, delimiter=separator), [])
    cfg = dict(type="CsvImageText", path=str(path), separator=separator, image_size=image_size,
               image_key=_pick(columns, IMAGE_COLUMNS, "image path", path),
               caption_key=_pick(columns, CAPTION_COLUMNS, "caption", path))
    label_key = _pick(columns, LABEL_COLUMNS, "label", path, required=classes is not None)
    if classes is not None:
        cfg.update(label_key=label_key, classes=list(classes))
    return cfg


def _user_dataset_cfg(data: Path, image_size: int, classes: Sequence[str] | None) -> dict:
    text = str(data)
    if data.suffix.lower() in (".csv", ".tsv"):
        if not data.is_file():
            raise _usage_error(f"--data: CSV file not found: {data}")
        return csv_dataset_cfg(data, image_size, classes)
    if ".tar" in text:
        cfg = dict(type="WebDatasetImageText", urls=text, image_size=image_size)
        if classes is not None:
            cfg["classes"] = list(classes)
        return cfg
    raise _usage_error(f"--data {data}: expected a .csv or .tsv file, or webdataset shards such as "
                       "'/data/val-{000000..000003}.tar'")


def _is_plain_open_clip(checkpoint: Path) -> bool:
    """Check whether ``checkpoint`` is an open_clip state dict rather than a whole-model MMEngine checkpoint."""
    from maskkit.integrations.mmengine.compat import load_checkpoint_file

    try:
        state = load_checkpoint_file(checkpoint, map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise _usage_error(f"failed to read checkpoint {checkpoint}: {error}") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    keys = [key.removeprefix("module.") for key, value in state.items() if torch.is_tensor(value)]
    if any(key.startswith("method.") for key in keys):
        return False
    if "logit_scale" in keys and any(key.startswith("visual.") for key in keys):
        return True
    raise _usage_error(f"checkpoint {checkpoint} contains neither a maskkit model ('method.' keys) nor an "
                       "open_clip model ('visual.' and 'logit_scale' keys)")


def evaluate(recipe: str, checkpoint: Path, work_dir: Path | None = None, cfg_options: Sequence[str] = (),
             data: Path | None = None, classnames: Path | None = None,
             templates: Path | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` with the recipe's model and metrics; returns the flat metrics dict.

    ``checkpoint`` is a ``maskkit train`` checkpoint or a plain open_clip state
    dict of the recipe's architecture (``maskkit export`` output).
    """
    if not checkpoint.is_file():
        raise _usage_error(f"checkpoint not found: {checkpoint}")
    classes = _read_lines(classnames, "--classnames")
    prompts = _read_lines(templates, "--templates")
    if prompts is not None and not all("{}" in prompt for prompt in prompts):
        raise _usage_error(f"--templates: every line of {templates} must contain '{{}}' for the class name")
    if work_dir is None:
        work_dir = Path("work_dirs") / f"{Path(recipe).stem}_eval"
    cfg, _ = load_recipe_config(recipe, cfg_options, work_dir)

    loader = cfg.get("val_dataloader")
    if not loader:
        raise _usage_error("the recipe has no val_dataloader to copy batch size and collate settings from")
    context_length = loader.get("collate_fn", {}).get("context_length")
    if data is not None:
        image_size = int(loader["dataset"].get("image_size", 224))
        loader["dataset"] = _user_dataset_cfg(data, image_size, classes)
        metrics = [dict(type="RetrievalMetric")]
        if classes is not None:
            metrics.append(dict(type="ZeroShotMetric", templates=prompts, context_length=context_length))
        cfg.val_evaluator = metrics
        cfg.val_cfg = dict(type="MultiValLoop")
    elif classes is not None or prompts is not None:
        for metric in cfg.val_evaluator if isinstance(cfg.val_evaluator, list) else [cfg.val_evaluator]:
            if metric.get("type") == "ZeroShotMetric":
                metric.update({key: value for key, value in (("class_names", classes), ("templates", prompts))
                               if value is not None})
    check_data_paths(cfg, ("val_dataloader",))

    if _is_plain_open_clip(checkpoint):
        cfg.model["pretrained"] = str(checkpoint)
        cfg.load_from = None
    else:
        cfg.load_from = str(checkpoint)
    cfg.resume = False
    cfg.model.setdefault("total_steps", 1)  # the EMA schedule is not used without training

    runner = build_runner(cfg)
    return dict(runner.val() or {})
