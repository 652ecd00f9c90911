"""View generators and score-map warping. Importing this package registers the built-in generators.

Registered names: ``"single"`` (CLIP, FLIP), ``"aclip"`` (A-CLIP),
``"slip"`` (SLIP) and ``"multi_crop"`` (any list of view specs).
"""

from maskkit.views.base import Views
from maskkit.views.boxes import CropSpec, crop_resize, sample_containing_boxes, sample_crop_boxes, union_boxes
from maskkit.views.colour import ColourSpec
from maskkit.views.generators import CLIP_MEAN, CLIP_STD, ViewGenerator, ViewSpec, rank_generator
from maskkit.views.warp import warp_scores

# Importing the generator modules registers them under their names.
from maskkit.views.single import SingleView
from maskkit.views.aclip import ACLIPViews
from maskkit.views.slip import SLIPViews
from maskkit.views.multi_crop import MultiCropViews

__all__ = [
    "Views",
    "ViewGenerator",
    "ViewSpec",
    "CropSpec",
    "ColourSpec",
    "SingleView",
    "ACLIPViews",
    "SLIPViews",
    "MultiCropViews",
    "warp_scores",
    "rank_generator",
    "crop_resize",
    "sample_crop_boxes",
    "sample_containing_boxes",
    "union_boxes",
    "CLIP_MEAN",
    "CLIP_STD",
]
