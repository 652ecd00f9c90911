"""A-CLIP's views: two augmented online views and one teacher view that contains both."""

from __future__ import annotations

from typing import Optional

import torch

from maskkit.registry import register_view_generator
from maskkit.views.base import Views
from maskkit.views.boxes import CropSpec, sample_containing_boxes, union_boxes, whole_image_boxes
from maskkit.views.colour import ColourSpec
from maskkit.views.generators import ViewGenerator, ViewSpec, _as_size

__all__ = ["ACLIPViews"]

TEACHER_BOXES = ("sampled", "union", "whole")


@register_view_generator("aclip")
class ACLIPViews(ViewGenerator):
    """Views ``"view1"``, ``"view2"`` (online) and ``"teacher"`` (``teacher_index=2``).

    The online views are random resized crops with colour augmentation. The
    teacher view is unaugmented: no colour change and no flip. Its box contains
    both online boxes for every sample, so the teacher's score map covers every
    online patch.

    Args:
        scale: online crop area range, default (0.5, 1.0).
        ratio: online crop aspect-ratio range (width / height), default (3/4, 4/3).
        colour: online colour augmentation, by default :meth:`ColourSpec.aclip`
            (jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2, blur p=0.1 with
            sigma in [0.1, 2], solarize p=0.2).
        flip_p: online flip probability, default 0. A flip is safe because
            ``warp_scores`` mirrors the map for flipped views, but A-CLIP uses none.
        teacher_box: ``"sampled"`` draws a box between the union of the online
            boxes and the whole image, then grows it to an aspect ratio inside
            ``teacher_ratio`` where the image allows it. ``"union"`` uses the union
            itself, and ``"whole"`` uses the whole image.
        teacher_ratio: aspect-ratio range of sampled teacher boxes, or None to
            keep the drawn box.
        teacher_size: teacher view size (int or (h, w)), or None for the output size.
            A-CLIP-eff uses half the output size.
        **options: :class:`~maskkit.views.generators.ViewGenerator` arguments
            (``output_size``, ``mean``, ``std``, ``input_normalized``, ...).

    ``__call__(images, generator)`` takes (B, 3, H, W) uint8 or float images and a
    ``torch.Generator`` on their device, and returns three views.
    """

    def __init__(self, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), colour: Optional[ColourSpec] = None,
                 flip_p: float = 0.0, teacher_box: str = "sampled", teacher_ratio=(3 / 4, 4 / 3),
                 teacher_size=None, **options):
        super().__init__(**options)
        if teacher_box not in TEACHER_BOXES:
            raise ValueError(f"teacher_box must be one of {TEACHER_BOXES}, got {teacher_box!r}")
        colour = ColourSpec.aclip() if colour is None else colour
        crop = CropSpec(scale=scale, ratio=ratio)
        self.online_specs = (
            ViewSpec(name="view1", crop=crop, colour=colour, flip_p=flip_p),
            ViewSpec(name="view2", crop=crop, colour=colour, flip_p=flip_p),
        )
        self.teacher_spec = ViewSpec(name="teacher", crop=None, size=_as_size("teacher_size", teacher_size))
        self.teacher_box = teacher_box
        self.teacher_ratio = teacher_ratio

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> Views:
        self.check_generator(generator, images)
        images = self.to_unit_range(images)
        online = [self.render(images, spec, generator) for spec in self.online_specs]
        online_boxes = torch.stack([boxes for _, boxes, _ in online])

        if self.teacher_box == "whole":
            teacher_boxes = whole_image_boxes(images.shape[0], device=images.device)
        elif self.teacher_box == "union":
            teacher_boxes = union_boxes(online_boxes)
        else:
            aspect = images.shape[-1] / images.shape[-2]
            teacher_boxes = sample_containing_boxes(union_boxes(online_boxes), generator,
                                                    ratio=self.teacher_ratio, aspect=aspect)
        teacher, teacher_boxes, teacher_flipped = self.render(images, self.teacher_spec, generator,
                                                              boxes=teacher_boxes)

        return Views(views=[view for view, _, _ in online] + [teacher],
                     boxes=torch.cat([online_boxes, teacher_boxes[None]]),
                     flipped=torch.stack([flipped for _, _, flipped in online] + [teacher_flipped]),
                     teacher_index=2, names=("view1", "view2", "teacher"))
