"""View generators and score-map warping. Importing this package registers the built-in generators."""

from maskkit.views.base import Views

__all__ = ["Views"]
