"""Zero-shot classification: prompt-ensembled text classifiers and top-k accuracy."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def build_zeroshot_classifier(model, tokenizer: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                              templates: Sequence[str], device: torch.device | str | None = None,
                              batch_size: int = 256) -> torch.Tensor:
    """Build the (D, C) zero-shot classifier of a CLIP model.

    Each class's column is the mean of its L2-normalised prompt embeddings (one per template,
    ``template.format(classname)``), normalised again. Nothing is cached: call it at every
    evaluation so the classifier follows the current text tower.

    Args:
        model: any object with ``encode_text(tokens) -> (B, D)`` (open_clip CLIP and CustomTextCLIP).
        tokenizer: callable ``list[str] -> (B, T)`` long.
        classnames: C class names; templates: prompt templates containing ``{}``.
        device: where to run the text tower (default: the device of the model's first parameter).
        batch_size: prompts per ``encode_text`` call.
    """
    if not classnames:
        raise ValueError("classnames must not be empty")
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f"templates must be a non-empty list of strings containing '{{}}', got {list(templates)!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prompts = [template.format(name) for name in classnames for template in templates]
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size]).to(device)
        embeddings.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(embeddings).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T.contiguous()


def zeroshot_accuracy(image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                      topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, as ``{"zeroshot_top1": ..., "zeroshot_top5": ...}``.

    Args:
        image_features: (N, D) image embeddings (normalised here).
        labels: (N,) class indices in [0, C).
        classifier: (D, C) from :func:`build_zeroshot_classifier`.
        topk: the k values; a k larger than C counts every sample as a hit (100 %).

    Ties in the logits count in the sample's favour only if ``torch.topk`` happens to pick it.
    """
    if image_features.ndim != 2 or classifier.ndim != 2 or image_features.shape[1] != classifier.shape[0]:
        raise ValueError(f"image_features (N, D) and classifier (D, C) must share D, got "
                         f"{tuple(image_features.shape)} and {tuple(classifier.shape)}")
    if labels.shape != image_features.shape[:1]:
        raise ValueError(f"labels must have shape ({image_features.shape[0]},), got {tuple(labels.shape)}")
    if any(k < 1 for k in topk):
        raise ValueError(f"every k in topk must be >= 1, got {tuple(topk)}")
    num_classes = classifier.shape[1]
    logits = F.normalize(image_features.float(), dim=-1) @ classifier.to(image_features.device).float()
    ranked = logits.topk(min(max(topk), num_classes), dim=1).indices
    hits = ranked == labels.to(ranked.device)[:, None]
    return {f"zeroshot_top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in topk}
