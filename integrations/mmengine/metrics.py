"""MMEngine metrics over ``MaskKitCLIP`` predictions: zero-shot accuracy, retrieval recall, object patches kept.

Each prediction is one dict per batch (see ``MaskKitCLIP.forward(mode="predict")``)
with L2-normalised ``image_features`` and ``text_features`` (B, D) and, when the
data set has them, ``labels`` (B,) and ``boxes`` (B, 4). Metric keys have no
prefix (``default_prefix = None``); ``MultiValLoop`` prefixes keys of further
validation sets with the set name.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric

from .registry import METRICS

__all__ = ["ZeroShotMetric", "RetrievalMetric", "PatchKeptMetric"]


class _FeatureMetric(BaseMetric):
    """Base of the metrics here: stores one result per batch and concatenates them at the end.

    NOTE: under DDP, MMEngine gathers the per-rank results without removing the
    samples that the distributed sampler repeats to even out the ranks, so
    those few samples count twice.
    """

    default_prefix = None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append({key: value for key, value in sample.items() if key != "captions"})

    @staticmethod
    def _cat(results: list[dict], key: str) -> torch.Tensor | None:
        if not results or any(key not in result for result in results):
            return None
        return torch.cat([result[key] for result in results])


@METRICS.register_module(force=True)
class ZeroShotMetric(_FeatureMetric):
    """Zero-shot classification top-1 and top-5 (``zeroshot_top1``, ``zeroshot_top5``), in percent.

    The classifier is rebuilt at every evaluation from the model's current text
    tower: each class name is put in every template, the normalised text features
    are averaged over templates and normalised again. ``MultiValLoop`` hands the
    model to the metric before each evaluation (:meth:`bind_model`).

    Args:
        class_names, templates: default to the validation set's ``metainfo``
            ``classes`` and ``templates``.
        tokenizer, context_length: open_clip tokenizer name and text length.
    """

    def __init__(self, class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                 tokenizer: str = "ViT-B-16", context_length: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.templates = tuple(templates) if templates is not None else None
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._model = None

    def bind_model(self, model: torch.nn.Module) -> None:
        """Set the model whose text tower builds the classifier."""
        self._model = model.module if hasattr(model, "module") else model

    def _classifier(self) -> torch.Tensor:
        meta = self.dataset_meta or {}
        class_names = self.class_names or meta.get("classes")
        templates = self.templates or meta.get("templates") or ("a photo of a {}.",)
        if not class_names:
            raise ValueError("ZeroShotMetric needs class names: pass class_names= or use a data set whose "
                             "metainfo has 'classes'")
        if self._model is None:
            raise RuntimeError("ZeroShotMetric has no model; use val_cfg=dict(type='MultiValLoop'), "
                               "which binds the model before each evaluation")
        from maskkit.evaluation.zeroshot import build_zeroshot_classifier

        from .datasets import get_cached_tokenizer

        context_length = self.context_length or getattr(self._model, "context_length", None)
        tokenizer = get_cached_tokenizer(self.tokenizer, context_length)
        clip = self._model.clip
        was_training = clip.training
        clip.eval()
        try:
            return build_zeroshot_classifier(clip, tokenizer, list(class_names), list(templates)).cpu()
        finally:
            clip.train(was_training)

    def compute_metrics(self, results: list) -> dict:
        from maskkit.evaluation.zeroshot import zeroshot_accuracy

        images = self._cat(results, "image_features")
        labels = self._cat(results, "labels")
        if labels is None:
            raise ValueError("ZeroShotMetric needs 'labels' in every batch; the validation set has none")
        return zeroshot_accuracy(images, labels, self._classifier(), topk=(1, 5))


@METRICS.register_module(force=True)
class RetrievalMetric(_FeatureMetric):
    """Image-to-text and text-to-image recall@1/5/10 in percent (``i2t_r1`` ... ``t2i_r10``).

    Uses one caption per image (the batch's ``texts``): image i matches caption i.
    """

    def compute_metrics(self, results: list) -> dict:
        from maskkit.evaluation.retrieval import retrieval_recall

        images = self._cat(results, "image_features")
        texts = self._cat(results, "text_features")
        return retrieval_recall(images, texts, torch.arange(texts.shape[0]), ks=(1, 5, 10))


@METRICS.register_module(force=True)
class PatchKeptMetric(_FeatureMetric):
    """Share of object patches the selector keeps, in percent (``object_patch_kept``).

    Needs ``keep_idx`` (B, K), ``grid`` and ``boxes`` (B, 4) in the predictions.
    ``MaskKitCLIP`` adds ``keep_idx`` and ``grid`` only when its method has a
    ``select_patches(images) -> (keep_idx, grid)`` method; without any such
    batch the metric returns no key. A patch is an object patch when its box
    covers at least half of it (``maskkit.evaluation.masks.object_patch_mask``).
    Samples without object patches are left out of the mean.
    """

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        from maskkit.evaluation.masks import object_patch_mask

        for sample in data_samples:
            if "keep_idx" not in sample or "boxes" not in sample:
                continue
            objects = object_patch_mask(sample["boxes"], tuple(sample["grid"]))
            kept = torch.zeros_like(objects).scatter_(1, sample["keep_idx"].long(), True)
            count = objects.sum(dim=1)
            has_object = count > 0
            share = (objects & kept).sum(dim=1)[has_object].float() / count[has_object].float()
            self.results.append({"object_patch_kept": share})

    def compute_metrics(self, results: list) -> dict:
        kept = self._cat(results, "object_patch_kept")
        if kept is None or kept.numel() == 0:
            return {}
        return {"object_patch_kept": 100.0 * kept.mean().item()}
