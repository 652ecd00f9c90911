"""One-view generator for plain CLIP and FLIP."""

from __future__ import annotations

from typing import Optional

import torch

from maskkit.registry import register_view_generator
from maskkit.views.base import Views
from maskkit.views.boxes import CropSpec
from maskkit.views.generators import ViewGenerator, ViewSpec

__all__ = ["SingleView"]


@register_view_generator("single")
class SingleView(ViewGenerator):
    """One view named ``"view1"``: a random resized crop without colour augmentation.

    Args:
        crop: False feeds the whole image, resized to the output size.
        scale: crop area range as a fraction of the image (A-CLIP's online views use (0.5, 1.0)).
        ratio: crop aspect-ratio range (width / height).
        flip_p: probability of a left-right flip.
        name: the view's name.
        **options: :class:`~maskkit.views.generators.ViewGenerator` arguments
            (``output_size``, ``mean``, ``std``, ``input_normalized``, ...).

    ``__call__(images, generator)`` takes (B, 3, H, W) uint8 or float images (see
    the base class) and a ``torch.Generator`` on their device, and returns
    :class:`~maskkit.views.base.Views` with one view and ``teacher_index=None``.
    """

    def __init__(self, crop: bool = True, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.0,
                 name: str = "view1", **options):
        super().__init__(**options)
        crop_spec = CropSpec(scale=scale, ratio=ratio) if crop else None
        self.spec = ViewSpec(name=name, crop=crop_spec, flip_p=flip_p)

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> Views:
        self.check_generator(generator, images)
        view, boxes, flipped = self.render(self.to_unit_range(images), self.spec, generator)
        return Views(views=[view], boxes=boxes[None], flipped=flipped[None], teacher_index=None,
                     names=(self.spec.name,))
