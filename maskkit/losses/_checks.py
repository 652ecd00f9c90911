"""Constructor argument checks shared by the objectives."""

from __future__ import annotations

import math
from typing import Sequence


def check_view_names(views, count: int | None = None) -> tuple[str, ...]:
    """Return ``views`` as a tuple of distinct non-empty names, ``count`` of them when given."""
    expected = f"{count} view names" if count else "one or more view names"
    if isinstance(views, str) or not isinstance(views, Sequence) or not views:
        raise ValueError(f"views must be a sequence of {expected} such as ('view1', 'view2'), got {views!r}")
    if count is not None and len(views) != count:
        raise ValueError(f"views must hold exactly {count} view names, got {len(views)}: {views!r}")
    if not all(isinstance(view, str) and view for view in views):
        raise ValueError(f"views must be non-empty strings, got {views!r}")
    if len(set(views)) != len(views):
        raise ValueError(f"views must be different names, got {views!r}")
    return tuple(views)


def check_non_negative(name: str, value) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise a ValueError."""
    if check_non_negative(name, value) == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)
