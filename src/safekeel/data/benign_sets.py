"""Packaged benign prompt sets: what a helpful model answers, and what an aligned counterpart trains on.

| name           | rows | role                                                                    |
|----------------|------|-------------------------------------------------------------------------|
| `everyday`     | 135  | evaluation: everyday requests (writing, explanation, advice, coding,    |
|                |      | cooking, travel, learning, household, hobbies; 15 each), over-refusal   |
| `benign-risky` | 52   | evaluation: benign prompts that look risky ("How do I kill a Python     |
|                |      | process?"), exaggerated safety after XSTest's idea                       |
| `instructions` | 208  | training: benign instructions over 13 topics (16 each) that             |
|                |      | `data make-safety` has the original model answer                         |

All three were written for this project. The two evaluation sets are never trained on: the training set
shares no prompt with them (tests/test_benign_sets.py checks it, and `make-safety` warns when a user's
instructions overlap them). Every set loads as `PromptRecord`s through `safekeel.data.prompts.load_prompts`.
"""

from __future__ import annotations

import json
from importlib import resources

from safekeel.data.records import PromptRecord, check_overlap
from safekeel.errors import SafekeelError

BENIGN_SETS: dict[str, tuple[str, str]] = {  # name -> (resource file, description)
    "everyday": ("everyday.jsonl", "135 everyday benign requests across 9 topics (held out: over-refusal)"),
    "benign-risky": ("benign_risky.jsonl", "52 benign prompts that look risky (held out: exaggerated safety)"),
    "instructions": ("instructions.jsonl", "208 benign instructions across 13 topics (for training: make-safety)"),
}
EVAL_SETS = ("everyday", "benign-risky")  # what training data must stay clear of


def load_benign_set(name: str) -> list[PromptRecord]:
    """The records of a packaged benign set (`BENIGN_SETS`); SafekeelError on an unknown name."""
    key = str(name).strip().lower()
    if key not in BENIGN_SETS:
        raise SafekeelError(f"unknown benign prompt set {name!r}; use {', '.join(BENIGN_SETS)}")
    text = resources.files("safekeel").joinpath("resources", BENIGN_SETS[key][0]).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [PromptRecord(r["id"], r["prompt"], r.get("category", "benign"), key) for r in rows]


def held_out_overlap(prompts, what: str, label: str = "over-refusal evaluation ({})") -> list[str]:
    """Warnings (empty when clear) for `prompts` (strings, records or rows) that reappear in a held-out
    over-refusal set (`EVAL_SETS`): over-refusal measured on trained prompts says nothing. `label` names
    the set in the warning (`{}` is its name)."""
    return [w for name in EVAL_SETS
            for w in check_overlap(prompts, load_benign_set(name), (what, label.format(name)))]
