"""View-generator contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["Views"]


@dataclass
class Views:
    """Augmented views of one batch.

    Attributes:
        views: V tensors of shape (B, 3, H_v, W_v), normalised with the
            generator's ``mean`` and ``std``. Sizes may differ between views.
        boxes: (V, B, 4) float xyxy box of each view in normalised source-image
            coordinates [0, 1].
        flipped: (V, B) bool, True where a view is mirrored horizontally.
        teacher_index: index of the teacher view in ``views``, or None.
        names: one name per view (for example ``("view1", "view2", "teacher")``);
            objectives and methods refer to views by these names.
    """

    views: list[torch.Tensor]
    boxes: torch.Tensor
    flipped: torch.Tensor
    teacher_index: Optional[int] = None
    names: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.views)

    def index(self, name: str) -> int:
        """Position of the view called ``name``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no view named {name!r}; views are {list(self.names)}") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.views[self.index(name)]
