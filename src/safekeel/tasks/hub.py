"""`gsm8k`, `sst2`, `agnews` from the Hugging Face Hub, in the prompt formats of the PACT paper's code.

Formats (read from the authors' repository, Glresearch1/PACT, and the Lisa code it follows for GSM8K):
- GSM8K: the user turn is the question; the target is the reference solution with "####" replaced by
  "The final answer is: "; graded on the final number. Test = the first 1000 test problems.
- SST-2: "Analyze the sentiment of the input, and respond only positive or negative" + " " + sentence;
  target "positive"/"negative". Test = the validation split (SST-2's test labels are hidden).
- AG News: "Categorize the news article given in the input into one of the 4 categories:\\n\\nWorld\\n
  Sports\\nBusiness\\nSci/Tech\\n" + " " + text; target the class name. Test = the first 1000 test items.
The authors score SST-2 by exact match and AG News by a class-word regex; we take the first label word
in the response for both (a superset of exact match).

Seed 0 keeps the hub's row order (so the test sets are the paper's "first 1000"); any other seed takes
a seeded random sample. Offline, loading fails at once with a SafekeelError naming the offline task.
"""

from __future__ import annotations

import random
import re
from typing import ClassVar

from safekeel.errors import SafekeelError
from safekeel.tasks.arith import canonical_number, extract_number
from safekeel.tasks.base import LabelTask, Task, TaskExample
from safekeel.tasks.sentiment import INSTRUCTION as SST2_INSTRUCTION
from safekeel.tasks.sentiment import SentimentTask
from safekeel.tasks.topic import INSTRUCTION as AGNEWS_INSTRUCTION
from safekeel.tasks.topic import TopicTask


class HubTask(Task):
    """A task read from a hub dataset. Subclasses give `repo`, `config`, `hub_splits` and `convert`."""

    repo: str = ""
    config: str | None = None
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}
    offline_twin = ""  # the generated task to suggest when offline
    default_sizes: ClassVar[dict[str, int | None]] = {"train": None, "test": 1000}

    def __init__(self):
        self._rows: dict[str, list[dict]] = {}

    def _load(self, split: str) -> list[dict]:
        from safekeel.rows import load_hub_rows  # looked up on each call, so tests can replace it

        if split not in self._rows:
            what = f"task {self.name}" + (f" (offline, use the generated task {self.offline_twin!r})"
                                          if self.offline_twin else "")
            self._rows[split] = load_hub_rows(self.repo, self.config, self.hub_splits[split], what=what)
        return self._rows[split]

    def convert(self, row: dict) -> tuple[str, str, str]:
        """(prompt, answer, response) for one hub row."""
        raise NotImplementedError

    def _examples(self, split: str, n: int | None, seed: int) -> list[TaskExample]:
        rows = self._load(split)
        order = list(range(len(rows)))
        if seed != 0:
            random.Random(f"{self.name}|{split}|{seed}").shuffle(order)
        out = []
        for i in order[: n if n is not None else len(order)]:
            prompt, answer, response = self.convert(rows[i])
            out.append(TaskExample(f"{self.name}-{split}-{i}", prompt, answer, response, {"hub_index": i}))
        if not out:
            raise SafekeelError(f"task {self.name}: the {split} split is empty")
        return out


class GSM8KTask(HubTask):
    name = "gsm8k"
    description = "GSM8K grade-school maths (hub: openai/gsm8k), graded on the final number"
    repo, config = "openai/gsm8k", "main"
    offline_twin = "arith"
    max_new_tokens = 512

    def convert(self, row):
        solution = row["answer"]
        answer = canonical_number(solution.split("####")[-1].strip()) or solution.split("####")[-1].strip()
        return row["question"], answer, re.sub(r"####\s*", "The final answer is: ", solution)

    def extract(self, response):
        return extract_number(response)

    def same_answer(self, predicted, gold):
        return canonical_number(predicted) is not None and canonical_number(predicted) == canonical_number(gold)


class SST2Task(HubTask, LabelTask):
    name = "sst2"
    description = "SST-2 sentiment (hub: stanfordnlp/sst2), labels positive / negative"
    repo = "stanfordnlp/sst2"
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "validation"}
    default_sizes: ClassVar[dict[str, int | None]] = {"train": None, "test": None}
    offline_twin = "sentiment"
    labels = SentimentTask.labels

    def convert(self, row):
        label = "positive" if int(row["label"]) == 1 else "negative"
        return f"{SST2_INSTRUCTION} {row['sentence']}", label, label


class AGNewsTask(HubTask, LabelTask):
    name = "agnews"
    description = "AG News topics (hub: fancyzhx/ag_news), labels World / Sports / Business / Sci/Tech"
    repo = "fancyzhx/ag_news"
    offline_twin = "topic"
    labels = TopicTask.labels
    CLASSES = ("World", "Sports", "Business", "Sci/Tech")  # the dataset's label ids 0..3

    def convert(self, row):
        label = self.CLASSES[int(row["label"])]
        return f"{AGNEWS_INSTRUCTION} {row['text']}", label, label
