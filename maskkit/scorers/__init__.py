"""Token scorers. Importing this package registers the built-in ones."""

from maskkit.scorers.base import Scorer, ScoringInputs

__all__ = ["Scorer", "ScoringInputs"]
