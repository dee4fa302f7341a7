"""A task from a local labelled file (.jsonl/.json/.csv/.parquet) with `prompt` and `answer` fields.

The task's name is the file's stem. Optional fields: `id`; `response` (the training target; the answer
itself when absent); `split` ("train"/"test"): when present it picks the rows of each split, when
absent every row serves whichever split is asked for (the file was chosen for that job).

Grading adapts to the answers: when every answer is a number, the final number of the response is
compared (as in `arith`); when the answers form a small label set (at most 50 distinct short labels),
the first label word in the response; otherwise the response must equal the answer after
normalisation, or start with it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import ClassVar

from safekeel.errors import SafekeelError
from safekeel.rows import read_rows
from safekeel.tasks.arith import canonical_number, extract_number
from safekeel.tasks.base import Task, TaskExample
from safekeel.text import normalise_text

MAX_LABELS = 50


class LocalTask(Task):
    description = "a local labelled file with prompt and answer fields"
    default_sizes: ClassVar[dict[str, int | None]] = {"train": None, "test": None}

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.stem
        rows = read_rows(self.path)
        if not rows:
            raise SafekeelError(f"task file {self.path} is empty")
        self._by_split: dict[str | None, list[TaskExample]] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise SafekeelError(f"{self.path}: row {i + 1} is not an object")
            missing = [f for f in ("prompt", "answer") if row.get(f) in (None, "")]
            if missing:
                raise SafekeelError(f"{self.path}: row {i + 1} has no {' or '.join(repr(m) for m in missing)} field "
                                    f"(fields: {', '.join(sorted(row)) or 'none'}); a task file needs prompt and answer")
            split = row.get("split") or None
            if split not in (None, "train", "test"):
                raise SafekeelError(f"{self.path}: row {i + 1} has split {split!r}; use train or test")
            answer = str(row["answer"]).strip()
            example = TaskExample(str(row.get("id", f"{self.name}-{i}")), str(row["prompt"]), answer,
                                  str(row.get("response") or answer), {"row": i})
            self._by_split.setdefault(split, []).append(example)
        answers = [e.answer for rows_ in self._by_split.values() for e in rows_]
        if all(canonical_number(a) is not None for a in answers):
            self.mode, self.max_new_tokens = "number", 512  # a worked solution ending in the number
        elif len({a.lower() for a in answers}) <= MAX_LABELS and all(len(a) <= 40 for a in answers):
            self.mode, self.max_new_tokens = "label", 64
            self.label_set = sorted(set(answers), key=lambda a: (-len(a), a))  # longest first: "very good" before "good"
        else:
            self.mode = "exact"

    def _examples(self, split: str, n: int | None, seed: int) -> list[TaskExample]:
        has_splits = any(k is not None for k in self._by_split)
        rows = list(self._by_split.get(split, [])) if has_splits else list(self._by_split[None])
        if has_splits and None in self._by_split:
            raise SafekeelError(f"{self.path}: some rows have a split field and some do not")
        if not rows:
            raise SafekeelError(f"{self.path} has no {split} rows")
        if seed != 0:
            random.Random(f"{self.name}|{split}|{seed}").shuffle(rows)
        return rows[:n] if n is not None else rows

    def extract(self, response: str) -> str | None:
        text = response or ""
        if self.mode == "number":
            return extract_number(text)
        if self.mode == "label":
            best = None
            for label in self.label_set:
                m = re.search(r"(?<!\w)" + re.escape(label) + r"(?!\w)", text, flags=re.IGNORECASE)
                if m and (best is None or m.start() < best[0]):
                    best = (m.start(), label)
            return best[1] if best else None
        return text.strip() or None

    def same_answer(self, predicted: str, gold: str) -> bool:
        if self.mode == "number":
            return canonical_number(predicted) is not None and canonical_number(predicted) == canonical_number(gold)
        if self.mode == "label":
            return predicted.lower() == gold.lower()
        p, g = normalise_text(predicted), normalise_text(gold)
        return bool(g) and (p == g or p.startswith(g + " "))
