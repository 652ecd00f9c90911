"""SLIP's three views: one CLIP crop and two SimCLR crops."""

from __future__ import annotations

from typing import Optional

import torch

from maskkit.registry import register_view_generator
from maskkit.views.base import Views
from maskkit.views.boxes import CropSpec
from maskkit.views.colour import ColourSpec
from maskkit.views.generators import ViewGenerator, ViewSpec

__all__ = ["SLIPViews"]


@register_view_generator("slip")
class SLIPViews(ViewGenerator):
    """Views ``"clip"``, ``"simclr1"`` and ``"simclr2"``, with no teacher view.

    Args:
        clip_scale: crop area range of the image-text view (no colour augmentation, no flip).
        simclr_scale: crop area range of the two SimCLR views.
        ratio: crop aspect-ratio range of all views.
        colour: colour augmentation of the SimCLR views, by default
            :meth:`ColourSpec.simclr` (jitter 0.4/0.4/0.4/0.1 with p=0.8,
            grayscale p=0.2, blur p=0.5 with sigma in [0.1, 2]).
        flip_p: flip probability of the SimCLR views.
        **options: :class:`~maskkit.views.generators.ViewGenerator` arguments.

    ``__call__(images, generator)`` takes (B, 3, H, W) uint8 or float images and a
    ``torch.Generator`` on their device, and returns three views.
    """

    def __init__(self, clip_scale=(0.5, 1.0), simclr_scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 colour: Optional[ColourSpec] = None, flip_p: float = 0.5, **options):
        super().__init__(**options)
        colour = ColourSpec.simclr() if colour is None else colour
        simclr_crop = CropSpec(scale=simclr_scale, ratio=ratio)
        self.specs = (
            ViewSpec(name="clip", crop=CropSpec(scale=clip_scale, ratio=ratio)),
            ViewSpec(name="simclr1", crop=simclr_crop, colour=colour, flip_p=flip_p),
            ViewSpec(name="simclr2", crop=simclr_crop, colour=colour, flip_p=flip_p),
        )

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> Views:
        return self.render_specs(images, self.specs, generator, teacher_index=None)
