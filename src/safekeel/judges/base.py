"""The judge interface.

A judge sees (prompt, response) pairs and returns one `Judgement` per pair. The verdict is `safe`,
`unsafe` or `error`; `error` (the judge could not parse or reach its model) never counts as safe: ASR
is computed over judged pairs and errors are reported beside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

VERDICTS = ("safe", "unsafe", "error")


@dataclass
class Judgement:
    verdict: str  # safe | unsafe | error
    score: float | None = None  # judge-specific harmfulness score in [0, 1], when it has one
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def refused(self) -> bool:
        return bool(self.details.get("refusal", False))


class Judge(ABC):
    """Base class. Subclasses set `id` (recorded in results) and implement `judge`."""

    id: str = "judge"

    @abstractmethod
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Judgement]:
        """One judgement per (prompt, response) pair, in order."""

    def __call__(self, prompts, responses):
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.judge(prompts, responses)
