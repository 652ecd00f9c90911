"""timm hosting helpers.

The selector itself needs no timm import: :func:`maskkit.attach` finds the
``patch_drop`` slot of timm ``VisionTransformer`` and ``Eva`` models by duck
typing. This module adds the timm-specific convenience of building a model by
name with a selector attached.
"""

from __future__ import annotations

from typing import Any

from maskkit.hosting import AttachHandle, attach
from maskkit.tokens import TokenSelector

__all__ = ["create_masked_model"]


def create_masked_model(model_name: str, selector: TokenSelector, **model_kwargs: Any) -> tuple[Any, AttachHandle]:
    """Create a timm model by name (random init unless ``pretrained`` is given) and attach ``selector``.

    Args:
        model_name: any timm ViT or Eva name, for example ``"vit_small_patch16_224"``.
        selector: the :class:`~maskkit.TokenSelector` to place in the model's ``patch_drop`` slot.
        **model_kwargs: passed to ``timm.create_model``; weights load only from local files
            (``pretrained_cfg_overlay=dict(file=PATH)``), never from a hub.

    Returns:
        ``(model, handle)``; ``handle.remove()`` restores the original slot.

    Example:
        >>> import maskkit
        >>> from maskkit.integrations.timm import create_masked_model
        >>> model, handle = create_masked_model(
        ...     "vit_tiny_patch16_224", maskkit.TokenSelector(keep_ratio=0.5, scorer=maskkit.build_scorer("random")),
        ...     img_size=32, depth=1, num_classes=0)
        >>> handle.grid
        (2, 2)
    """
    try:
        import timm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('maskkit.integrations.timm needs timm: pip install "maskkit[timm]"') from error

    model = timm.create_model(model_name, **model_kwargs)
    return model, attach(model, selector)
