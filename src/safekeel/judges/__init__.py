"""Judges decide whether a model's answer to a harmful prompt is safe or unsafe.

`get_judge("keyword")` and the other specs in `safekeel.judges.registry.JUDGES`.
"""

from safekeel.judges.base import Judge, Judgement
from safekeel.judges.registry import JUDGES, get_judge, register_judge

__all__ = ["JUDGES", "Judge", "Judgement", "get_judge", "register_judge"]
