"""Token scorers. Importing this package registers the built-in ones.

Registered names: ``"random"`` (FLIP-style random keep), ``"ema_attention"``
(A-CLIP's EMA-teacher attention) and ``"learned"`` (an MLP on the tokens).
"""

from maskkit.scorers.base import Scorer, ScoringInputs
from maskkit.scorers.random import RandomScorer  # noqa: E402  (registers "random")
from maskkit.scorers.ema_attention import EMAAttentionScorer, TeacherOutput  # noqa: E402  (registers "ema_attention")
from maskkit.scorers.learned import LearnedScorer  # noqa: E402  (registers "learned")

__all__ = ["Scorer", "ScoringInputs", "RandomScorer", "EMAAttentionScorer", "TeacherOutput", "LearnedScorer"]
