"""Objectives (image-text InfoNCE, NT-Xent, BYOL). Importing this package registers them.

The keys of the ``outputs`` dict that objectives read are documented in
:mod:`maskkit.losses.outputs`.
"""

from maskkit.losses.byol import BYOLObjective, byol_loss
from maskkit.losses.clip import CLIPObjective, clip_loss
from maskkit.losses.heads import MLPHead
from maskkit.losses.simclr import SimCLRObjective, nt_xent_loss

__all__ = [
    "BYOLObjective",
    "CLIPObjective",
    "MLPHead",
    "SimCLRObjective",
    "byol_loss",
    "clip_loss",
    "nt_xent_loss",
]
