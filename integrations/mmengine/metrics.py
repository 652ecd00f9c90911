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

__all__ = ["ZeroShotMetric", "RetrievalMetric", "PatchKeptMetric", "topk_accuracy", "recall_at_k"]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows of ``logits`` (N, C) whose label is among the top k, for each k (capped at C)."""
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return {k: hits[:, :min(k, max_k)].any(dim=1).float().mean().item() for k in ks}


def recall_at_k(similarity: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k of row-to-column retrieval where row i's match is column i; ``similarity`` is (N, N)."""
    target = similarity.diagonal().view(-1, 1)
    # Rank of the matching column: how many columns score strictly higher.
    rank = (similarity > target).sum(dim=1)
    return {k: (rank < k).float().mean().item() for k in ks}


class _FeatureMetric(BaseMetric):
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
        from .datasets import get_cached_tokenizer

        context_length = self.context_length or getattr(self._model, "context_length", None)
        tokenize = get_cached_tokenizer(self.tokenizer, context_length)
        prompts = [template.format(name) for name in class_names for template in templates]
        was_training = self._model.training
        self._model.eval()
        with torch.no_grad():
            features = self._model.encode_class_prompts(tokenize(prompts))
        self._model.train(was_training)
        features = features.float().cpu().view(len(class_names), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(features, dim=-1)

    def compute_metrics(self, results: list) -> dict:
        images = self._cat(results, "image_features")
        labels = self._cat(results, "labels")
        if labels is None:
            raise ValueError("ZeroShotMetric needs 'labels' in every batch; the validation set has none")
        accuracy = topk_accuracy(images @ self._classifier().T, labels, (1, 5))
        return {"zeroshot_top1": 100.0 * accuracy[1], "zeroshot_top5": 100.0 * accuracy[5]}


@METRICS.register_module(force=True)
class RetrievalMetric(_FeatureMetric):
    """Image-to-text and text-to-image recall@1/5/10 in percent (``i2t_r1`` ... ``t2i_r10``).

    Uses one caption per image (the batch's ``texts``): image i matches caption i.
    """

    def compute_metrics(self, results: list) -> dict:
        images = self._cat(results, "image_features")
        texts = self._cat(results, "text_features")
        similarity = images @ texts.T
        i2t = recall_at_k(similarity, (1, 5, 10))
        t2i = recall_at_k(similarity.T, (1, 5, 10))
        metrics = {f"i2t_r{k}": 100.0 * value for k, value in i2t.items()}
        metrics.update({f"t2i_r{k}": 100.0 * value for k, value in t2i.items()})
        return metrics


@METRICS.register_module(force=True)
class PatchKeptMetric(_FeatureMetric):
    """Share of object patches the selector keeps (``object_patch_kept``, in percent).

    Needs ``object_patch_kept`` (B,) per batch in the predictions, the share of
    each sample's patches inside its box that were kept; ``MaskKitCLIP`` adds it
    when the batch has ``boxes`` and ``maskkit.evaluation.object_patch_kept``
    exists. Batches without it are left out; with none at all the key is absent.
    """

    def compute_metrics(self, results: list) -> dict:
        kept = self._cat([r for r in results if "object_patch_kept" in r], "object_patch_kept")
        if kept is None or kept.numel() == 0:
            return {}
        return {"object_patch_kept": 100.0 * kept.float().mean().item()}
