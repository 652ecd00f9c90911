"""Evaluate a CLIP model over a loader of collated batches: retrieval recall and zero-shot accuracy."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from maskkit.evaluation.retrieval import retrieval_recall
from maskkit.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_accuracy

logger = logging.getLogger(__name__)

# OpenAI CLIP's pixel statistics, open_clip's default normalisation (open_clip.OPENAI_DATASET_MEAN/STD).
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


def prepare_images(images: torch.Tensor, model, device: torch.device,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """Turn a (B, 3, H, W) uint8 batch into the model's float input: resized to ``model.visual.image_size``
    when the model states one and it differs, scaled to [0, 1] and normalised with ``mean``/``std``
    (default: ``model.visual.image_mean``/``image_std`` when set, else OpenAI CLIP's values)."""
    visual = getattr(model, "visual", None)
    mean = mean or getattr(visual, "image_mean", None) or DEFAULT_MEAN
    std = std or getattr(visual, "image_std", None) or DEFAULT_STD
    images = images.to(device, non_blocking=True).float().div_(255.0)
    target = getattr(visual, "image_size", None)
    if target is not None:
        target = (target, target) if isinstance(target, int) else tuple(target)
        if tuple(images.shape[-2:]) != target:
            images = F.interpolate(images, size=target, mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


@torch.no_grad()
def evaluate_model(model, loader: Iterable[dict[str, Any]], tokenizer: Callable[[list[str]], torch.Tensor],
                   classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                   device: torch.device | str | None = None, ks: Sequence[int] = (1, 5, 10),
                   topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Encode every batch of ``loader`` and return flat metrics (percent).

    Batches are dicts from ``maskkit.data``'s ``Collator``. Retrieval uses every caption in
    ``batch["captions"]`` when present, else the tokenized ``batch["texts"]`` (one per image), and
    returns ``i2t_r{k}`` and ``t2i_r{k}`` over the whole evaluation set. Zero-shot accuracy
    (``zeroshot_top{k}``) is added when ``classnames`` are given and every batch has ``"labels"``;
    the classifier is rebuilt at each call, with ``templates`` (default ``("a photo of a {}.",)``).
    Also returns ``num_images`` and ``num_texts``. The model runs in eval mode and its previous
    mode is restored.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        image_features, text_features, text_to_image, labels = [], [], [], []
        all_labelled, num_images = True, 0
        for batch in loader:
            count = batch["images"].shape[0]
            if count == 0:
                continue
            images = prepare_images(batch["images"], model, device)
            image_features.append(model.encode_image(images).float())
            if "captions" in batch:
                captions = [text for group in batch["captions"] for text in group]
                owners = [num_images + i for i, group in enumerate(batch["captions"]) for _ in group]
                tokens = tokenizer(captions)
            else:
                owners = list(range(num_images, num_images + count))
                tokens = batch["texts"]
            text_features.append(model.encode_text(tokens.to(device)).float())
            text_to_image.append(torch.tensor(owners, dtype=torch.long))
            if "labels" in batch:
                labels.append(batch["labels"])
            else:
                all_labelled = False
            num_images += count
        if num_images == 0:
            raise ValueError("the loader yielded no images to evaluate")

        images_all = torch.cat(image_features)
        metrics: dict[str, float] = retrieval_recall(images_all, torch.cat(text_features),
                                                     torch.cat(text_to_image).to(device), ks=ks)
        if classnames and all_labelled:
            classifier = build_zeroshot_classifier(model, tokenizer, classnames,
                                                   templates or ("a photo of a {}.",), device)
            metrics.update(zeroshot_accuracy(images_all, torch.cat(labels).to(device), classifier, topk))
        elif classnames:
            logger.warning("zero-shot accuracy skipped: some batches have no 'labels'")
        metrics["num_images"] = float(num_images)
        metrics["num_texts"] = float(sum(len(t) for t in text_to_image))
        return metrics
    finally:
        model.train(was_training)
