"""The task interface shared by training (`safekeel train --dataset TASK`) and `safekeel eval task`.

A task hands out labelled examples per split and grades a model's answer:

- `task.examples(split, n=None, seed=0) -> list[TaskExample]`: `split` is "train" or "test";
- `task.extract(response) -> str | None`: the answer found in a model's response, canonical form;
- `task.is_correct(response, example) -> bool`.

`TaskExample.response` is the training target (a worked solution, or the label itself), while
`TaskExample.answer` is what grading compares against.

Generated tasks (`GeneratedTask`) route every candidate example to a split by a hash of its normalised
prompt, so a test prompt can never appear in any train split, whatever the seeds or sizes asked for:
disjointness holds by construction, not by bookkeeping.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from safekeel.errors import SafekeelError
from safekeel.text import normalise_text, prompt_bucket

SPLITS = ("train", "test")


@dataclass(frozen=True)
class TaskExample:
    id: str
    prompt: str  # the user turn, exactly as the model sees it
    answer: str  # the gold answer, canonical form (compared by the task's `is_correct`)
    response: str  # the training target: a short worked solution or the label
    meta: dict = field(default_factory=dict)

    def messages(self, system: str | None = None) -> list[dict]:
        """Chat messages [system?, user, assistant] for training."""
        out = [{"role": "system", "content": system}] if system else []
        return out + [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.response}]

    def to_dict(self) -> dict:
        return asdict(self)


class Task(ABC):
    """Base class. Subclasses set `name`, `description`, `default_sizes` and implement `_examples`/`extract`."""

    name: str = "task"
    description: str = ""
    default_sizes: ClassVar[dict[str, int | None]] = {"train": 1000, "test": 200}
    # `eval task`'s default answer length: room for a chat model's own worked solution to finish, so the
    # score measures the skill, not whether the answer fits (the cut-off share is reported beside it)
    max_new_tokens: int = 256

    def examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[TaskExample]:
        """`n` examples of `split`; n=None gives the split's default size (`default_sizes`, where None means
        every row). The same arguments always give the same list."""
        if split not in SPLITS:
            raise SafekeelError(f"unknown split {split!r} for task {self.name}; use train or test")
        if n is None:
            n = self.default_sizes.get(split)
        elif isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise SafekeelError(f"number of examples must be a positive integer, got {n!r}")
        return self._examples(split, n, int(seed))

    @abstractmethod
    def _examples(self, split: str, n: int | None, seed: int) -> list[TaskExample]:
        """n=None: all rows (only tasks with a finite row set use it)."""

    @abstractmethod
    def extract(self, response: str) -> str | None:
        """The answer in `response` in canonical form, or None when there is none."""

    def same_answer(self, predicted: str, gold: str) -> bool:
        return predicted.strip().lower() == gold.strip().lower()

    def is_correct(self, response: str, example: TaskExample) -> bool:
        got = self.extract(response or "")
        return got is not None and self.same_answer(got, example.answer)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class GeneratedTask(Task):
    """A task whose examples are drawn from a seeded generator (`sample(rng) -> (prompt, answer, response)`).

    Each split draws from its own random stream (seeded by task name, split and seed) and keeps only the
    candidates whose prompt hashes into that split (1 in `TEST_BUCKETS` go to test), deduplicated, so
    `examples(split, n, seed)` is reproducible, its first k rows equal `examples(split, k, seed)`, and
    train and test never share a prompt.
    """

    TEST_BUCKETS = 5
    default_sizes: ClassVar[dict[str, int | None]] = {"train": 2000, "test": 500}

    @abstractmethod
    def sample(self, rng: random.Random) -> tuple[str, str, str]:
        """One candidate example: (prompt, answer, response)."""

    @classmethod
    def split_of(cls, prompt: str) -> str:
        return "test" if prompt_bucket(prompt, cls.TEST_BUCKETS) == 0 else "train"

    def _examples(self, split: str, n: int, seed: int) -> list[TaskExample]:
        rng = random.Random(f"{self.name}|{split}|{seed}")  # str seeds hash with sha512: stable across runs
        out: list[TaskExample] = []
        seen: set[str] = set()
        budget = 200 * n + 10_000  # generators here have millions of distinct prompts; this only stops a bug
        for _ in range(budget):
            prompt, answer, response = self.sample(rng)
            key = normalise_text(prompt)
            if key in seen or self.split_of(prompt) != split:
                continue
            seen.add(key)
            out.append(TaskExample(f"{self.name}-{split}-s{seed}-{len(out)}", prompt, answer, response))
            if len(out) == n:
                return out
        raise SafekeelError(f"task {self.name} could only generate {len(out)} distinct {split} examples; ask for fewer")


class LabelTask(Task):
    """Classification: `labels` maps each canonical label to regexes; the earliest match in the response wins."""

    labels: ClassVar[dict[str, tuple[str, ...]]] = {}
    max_new_tokens = 64  # a label, perhaps after a short preamble

    def extract(self, response: str) -> str | None:
        best: tuple[int, int, str] | None = None  # (start, -length, label): earliest, then longest
        for label, patterns in self.labels.items():
            for pattern in patterns:
                m = re.search(pattern, response or "", flags=re.IGNORECASE)
                if m and (best is None or (m.start(), -len(m.group(0))) < best[:2]):
                    best = (m.start(), -len(m.group(0)), label)
        return best[2] if best else None
