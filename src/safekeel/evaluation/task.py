"""`eval task`: accuracy on a downstream task, with answer extraction and a Wilson interval.

Tasks come from `safekeel.tasks.get_task(name_or_file)` (arith, sentiment, topic, gsm8k, sst2,
agnews, or a local labelled file); each gives `examples(split, n, seed)` with `id`, `prompt`, `answer`,
plus `extract(response)` and `is_correct(response, example)`. When `safekeel.tasks` is not installed,
a local labelled file (`prompt` and `answer` fields) still works through `LabelledFileTask` below.
Answers are generated greedily with the evaluation generator (resumable, like `eval safety`) and
scored on every run, so a better extractor rescores stored answers without regenerating them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.evaluation.results import check_output_dir, merge_results
from safekeel.evaluation.safety import generation_settings
from safekeel.evaluation.samples import SampleStore
from safekeel.evaluation.stats import wilson_interval

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def normalise_number(text: str) -> str | None:
    """'1,234.0' -> '1234'; '3.50' -> '3.5'; None when not a number."""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def extract_number(text: str) -> str | None:
    """The final answer number: after the last '####' or 'answer is/answer:' marker, else the last number."""
    text = text or ""
    for marker in (r"####", r"answer(?: is|:)\s*"):
        hits = list(re.finditer(marker, text, flags=re.IGNORECASE))
        if hits:
            m = _NUMBER.search(text, hits[-1].end())
            if m:
                return normalise_number(m.group().rstrip(",."))
    nums = _NUMBER.findall(text)
    return normalise_number(nums[-1].rstrip(",.")) if nums else None


def extract_label(text: str, labels) -> str | None:
    """The label word that appears first in `text` (whole word, case-insensitive); None if none does."""
    low = (text or "").lower()
    best = None
    for label in sorted(labels, key=len, reverse=True):  # longer first so 'very positive' beats 'positive'
        m = re.search(rf"\b{re.escape(label.lower())}\b", low)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), label)
    return best[1] if best else None


@dataclass
class TaskExample:
    id: str
    prompt: str
    answer: str


class LabelledFileTask:
    """A local .jsonl/.json/.csv/.parquet file with `prompt` and `answer` fields (optional `id`, `split`).

    Numeric answers are extracted as the final number; otherwise the answer set is the label vocabulary.
    `examples` keeps the file order (the first n rows of the split; `seed` is unused)."""

    def __init__(self, path: str | Path):
        from safekeel.data.prompts import read_rows

        self.path = Path(path)
        self.name = self.path.stem
        rows = read_rows(self.path)
        if not rows:
            raise SafekeelError(f"task file {path} is empty")
        self.rows = []
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
                raise SafekeelError(f"{path}: row {i} needs `prompt` and `answer` fields")
            self.rows.append(row)
        answers = [str(r["answer"]).strip() for r in self.rows]
        self.numeric = all(normalise_number(a) is not None for a in answers)
        self.labels = sorted(set(answers))

    def examples(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[TaskExample]:
        rows = self.rows
        if any("split" in r for r in rows):
            rows = [r for r in rows if str(r.get("split")) == split]
            if not rows:
                raise SafekeelError(f"{self.path} has no rows with split {split!r}")
        rows = rows[:n] if n else rows
        return [TaskExample(str(r.get("id", f"{self.name}-{i}")), str(r["prompt"]), str(r["answer"]).strip())
                for i, r in enumerate(rows)]

    def extract(self, response: str) -> str | None:
        return extract_number(response) if self.numeric else extract_label(response, self.labels)

    def is_correct(self, response: str, example) -> bool:
        got = self.extract(response)
        if got is None:
            return False
        if self.numeric:
            return got == normalise_number(str(example.answer))
        return got.lower() == str(example.answer).strip().lower()


def resolve_task(spec: str):
    """`safekeel.tasks.get_task(spec)`, or a `LabelledFileTask` when that module is not installed."""
    try:
        from safekeel.tasks import get_task
    except ModuleNotFoundError as exc:
        if exc.name not in ("safekeel.tasks",):
            raise
        get_task = None
    if get_task is not None:
        return get_task(spec)
    if spec.lower().endswith(_FILE_SUFFIXES):
        return LabelledFileTask(spec)
    raise SafekeelError(f"unknown task {spec!r}: generated and hub tasks need safekeel.tasks; "
                        "give a labelled .jsonl/.csv file with `prompt` and `answer` fields")


@dataclass
class TaskConfig:
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    system: str | None = None
    overwrite: bool = False
    progress: bool = True
    command: str = ""
    extra: dict = field(default_factory=dict)  # recorded in the run entry


def score_rows(task, rows: list[dict], examples: dict) -> dict:
    """Fill `extracted` and `correct` on sample rows; return the accuracy summary."""
    correct = failures = 0
    for row in rows:
        ex = examples[row["id"]]
        row["extracted"] = task.extract(row["response"])
        row["correct"] = bool(task.is_correct(row["response"], ex))
        correct += row["correct"]
        failures += row["extracted"] is None
    n = len(rows)
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n, "ci95": wilson_interval(correct, n),
            "extraction_failures": failures}


def run_task_eval(generator, task, out_dir: str | Path, cfg: TaskConfig, spec: str | None = None) -> dict:
    """Generate, score and merge `tasks.<name>` into DIR/results.json; returns the results."""
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    check_output_dir(out_dir, generator.fingerprint, cfg.overwrite)
    examples = task.examples(cfg.split, n=cfg.limit, seed=cfg.seed)
    if not examples:
        raise SafekeelError(f"task {task.name!r} has no {cfg.split!r} examples")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [{"id": str(e.id), "prompt": e.prompt, "answer": str(e.answer)} for e in examples]
    texts = [generator.format(r["prompt"], cfg.system) for r in records]
    gen = generation_settings(generator, cfg.system)
    store = SampleStore(out_dir / f"samples_task_{task.name}.jsonl", records, texts, generator.fingerprint, gen,
                        overwrite=cfg.overwrite)
    t_gen = store.fill(generator.generate, generator.batch_size, desc=task.name, progress=cfg.progress)
    load_s = getattr(generator, "load_s", 0.0)
    generator.close()
    summary = score_rows(task, store.ordered(), {str(e.id): e for e in examples})
    store.save()
    entry = {**summary, "task": spec or task.name, "split": cfg.split, "seed": cfg.seed, "limit": cfg.limit,
             "generation": gen, "samples": store.path.name, "reused": store.reused}
    run = {"command": cfg.command or "eval task", "generation": {**gen, "batch_size": generator.batch_size},
           **cfg.extra,
           "timing": {"load_s": round(load_s, 2), "generate_s": round(t_gen, 2),
                      "total_s": round(time.perf_counter() - t_start, 2)}}
    return merge_results(out_dir, generator.fingerprint, {"tasks": {task.name: entry}}, run,
                         overwrite=cfg.overwrite, top={"generation": gen})
