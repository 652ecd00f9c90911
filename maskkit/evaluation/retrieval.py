"""Image-text retrieval recall with several captions per image."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k in percent for image-to-text (``i2t_r{k}``) and text-to-image (``t2i_r{k}``) retrieval.

    Args:
        image_features: (I, D) image embeddings; text_features: (T, D) caption embeddings
            (both L2-normalised here, so cosine similarity ranks).
        text_to_image: (T,) long, the image index of each caption.
        ks: the k values.

    An image is a hit at k when any of its captions ranks among the k texts most similar to it. A
    caption is a hit when its image ranks among the k most similar images. Ranks count only strictly
    higher scores, so ties resolve in the query's favour. Images without captions are left out of
    the i2t average.
    """
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"image_features (I, D) and text_features (T, D) must share D, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    text_to_image = text_to_image.to(image_features.device).long()
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image must have shape ({num_texts},), got {tuple(text_to_image.shape)}")
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image values must be in [0, {num_images})")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k in ks must be >= 1, got {tuple(ks)}")

    similarity = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
    own = text_to_image[None, :] == torch.arange(num_images, device=similarity.device)[:, None]  # (I, T)

    # Text to image: how many images score higher than the caption's own image.
    own_score = similarity.gather(0, text_to_image[None, :])  # (1, T)
    t2i_rank = (similarity > own_score).sum(dim=0)

    # Image to text: how many texts score higher than the image's best caption.
    best_own = similarity.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)  # (I, 1)
    has_caption = own.any(dim=1)
    i2t_rank = (similarity > best_own).sum(dim=1)[has_caption]

    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = 100.0 * (i2t_rank < k).float().mean().item()
    for k in ks:
        metrics[f"t2i_r{k}"] = 100.0 * (t2i_rank < k).float().mean().item()
    return metrics
