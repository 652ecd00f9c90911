"""Generator of any number of views, each with its own settings."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch

from maskkit.registry import register_view_generator
from maskkit.views.base import Views
from maskkit.views.generators import ViewGenerator, ViewSpec

__all__ = ["MultiCropViews"]


@register_view_generator("multi_crop")
class MultiCropViews(ViewGenerator):
    """N views, one per :class:`~maskkit.views.generators.ViewSpec` (or dict of its fields).

    Args:
        specs: the views' settings, in output order. Dicts may give ``crop`` and
            ``colour`` as dicts too, so configs stay plain data.
        names: optional names that replace the specs' names.
        teacher_index: index of a view that scorers treat as the teacher view, or None.
            Nothing forces that view's box to contain the others, so use the
            ``"aclip"`` generator when containment matters.
        **options: :class:`~maskkit.views.generators.ViewGenerator` arguments.

    ``__call__(images, generator)`` takes (B, 3, H, W) uint8 or float images and a
    ``torch.Generator`` on their device. Views may have different sizes.
    """

    def __init__(self, specs: Sequence[Union[ViewSpec, Mapping]], names: Optional[Sequence[str]] = None,
                 teacher_index: Optional[int] = None, **options):
        super().__init__(**options)
        specs = [spec if isinstance(spec, ViewSpec) else ViewSpec(**spec) for spec in specs]
        if not specs:
            raise ValueError("specs must hold at least one view spec, got none")
        if names is not None:
            if len(names) != len(specs):
                raise ValueError(f"names has {len(names)} entries but there are {len(specs)} specs")
            specs = [ViewSpec(name=name, crop=spec.crop, colour=spec.colour, flip_p=spec.flip_p, size=spec.size)
                     for name, spec in zip(names, specs)]
        view_names = [spec.name for spec in specs]
        if len(set(view_names)) != len(view_names):
            raise ValueError(f"view names must be unique, got {view_names}")
        if teacher_index is not None and not 0 <= teacher_index < len(specs):
            raise ValueError(f"teacher_index must be in [0, {len(specs) - 1}] or None, got {teacher_index!r}")
        self.specs = tuple(specs)
        self.teacher_index = teacher_index

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> Views:
        return self.render_specs(images, self.specs, generator, teacher_index=self.teacher_index)
