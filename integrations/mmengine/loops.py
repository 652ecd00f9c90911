"""``MultiValLoop``: validate on several data sets in one MMEngine run.

MMEngine 0.10.7 has one ``val_dataloader`` and one ``val_evaluator``. This loop
evaluates those as the first set (metric keys unchanged) and each entry of
``extra_sets`` after it, with keys prefixed ``"<name>/"``::

    val_dataloader = dict(dataset=dict(type="EmbeddedImageText", split="test"), ...)
    val_evaluator = [dict(type="ZeroShotMetric"), dict(type="RetrievalMetric")]
    val_cfg = dict(type="MultiValLoop", extra_sets=[
        dict(name="cifar10", dataloader=dict(...), evaluator=[dict(type="ZeroShotMetric", class_names=[...])]),
    ])

Hooks see one validation: ``before_val``, one ``after_val_epoch`` with the merged
metrics, ``after_val``. Metrics with a ``bind_model`` method (``ZeroShotMetric``)
receive the model before each set is evaluated.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from mmengine.runner import ValLoop
from mmengine.runner.amp import autocast

from .registry import LOOPS

__all__ = ["MultiValLoop"]


@LOOPS.register_module(force=True)
class MultiValLoop(ValLoop):
    """Validation over the main val set plus named ``extra_sets``.

    Args:
        runner, dataloader, evaluator, fp16: as for MMEngine's ``ValLoop``.
        extra_sets: dicts with ``name`` (key prefix, unique, no ``/``),
            ``dataloader`` (config or DataLoader) and ``evaluator`` (config,
            list of metric configs, or Evaluator).
    """

    def __init__(self, runner, dataloader, evaluator, fp16: bool = False,
                 extra_sets: Sequence[dict] | None = None) -> None:
        _check_extra_sets(extra_sets or [])
        super().__init__(runner, dataloader, evaluator, fp16=fp16)
        self.extra_sets: list[tuple[str, Any, Any]] = []
        for entry in extra_sets or []:
            loader = entry["dataloader"]
            if isinstance(loader, dict):
                loader = runner.build_dataloader(loader, seed=runner.seed)
            set_evaluator = entry["evaluator"]
            if isinstance(set_evaluator, (dict, list)):
                set_evaluator = runner.build_evaluator(set_evaluator)
            if hasattr(loader.dataset, "metainfo"):
                set_evaluator.dataset_meta = loader.dataset.metainfo
            self.extra_sets.append((entry["name"], loader, set_evaluator))

    def _evaluate(self, dataloader, evaluator) -> dict:
        for metric in evaluator.metrics:
            if hasattr(metric, "bind_model"):
                metric.bind_model(self.runner.model)
        self.val_loss.clear()
        for index, data_batch in enumerate(dataloader):
            self._run_batch(index, data_batch, evaluator)
        return evaluator.evaluate(len(dataloader.dataset))

    @torch.no_grad()
    def _run_batch(self, index: int, data_batch, evaluator) -> None:
        self.runner.call_hook("before_val_iter", batch_idx=index, data_batch=data_batch)
        with autocast(enabled=self.fp16):
            outputs = self.runner.model.val_step(data_batch)
        evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook("after_val_iter", batch_idx=index, data_batch=data_batch, outputs=outputs)

    def run(self) -> dict:
        """Evaluate every set and return the merged metrics."""
        self.runner.call_hook("before_val")
        self.runner.call_hook("before_val_epoch")
        self.runner.model.eval()
        metrics = dict(self._evaluate(self.dataloader, self.evaluator))
        for name, loader, evaluator in self.extra_sets:
            for key, value in self._evaluate(loader, evaluator).items():
                metrics[f"{name}/{key}"] = value
        self.runner.call_hook("after_val_epoch", metrics=metrics)
        self.runner.call_hook("after_val")
        return metrics


def _check_extra_sets(extra_sets: Sequence[dict]) -> None:
    """Raise ValueError unless every entry has ``name``, ``dataloader`` and ``evaluator`` and names are unique."""
    seen: set[str] = set()
    for index, entry in enumerate(extra_sets):
        missing = {"name", "dataloader", "evaluator"} - set(entry)
        if missing:
            raise ValueError(f"extra_sets[{index}] is missing {sorted(missing)}; "
                             "each entry needs name, dataloader and evaluator")
        name = entry["name"]
        if not isinstance(name, str) or not name or "/" in name or name in seen:
            raise ValueError(f"extra_sets[{index}].name must be a unique non-empty string without '/', "
                             f"got {name!r}")
        seen.add(name)
