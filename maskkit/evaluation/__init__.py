"""Evaluation: zero-shot classification, image-text retrieval recall and object-patch statistics."""

from maskkit.evaluation.masks import object_patch_kept, object_patch_mask
from maskkit.evaluation.retrieval import retrieval_recall
from maskkit.evaluation.runner import evaluate_model, prepare_images
from maskkit.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_accuracy

__all__ = [
    "build_zeroshot_classifier",
    "evaluate_model",
    "object_patch_kept",
    "object_patch_mask",
    "prepare_images",
    "retrieval_recall",
    "zeroshot_accuracy",
]
