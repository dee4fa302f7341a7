"""Downstream tasks for fine-tuning and for `safekeel eval task`.

`get_task("arith")` (generated, offline), `get_task("gsm8k")` (hub), or `get_task("my_labels.jsonl")`
(a local labelled file). A new task is one module and one line in `TASKS`. See `safekeel.tasks.base`
for the interface.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.rows import FILE_SUFFIXES
from safekeel.tasks.base import Task, TaskExample

# name -> "module:class"
TASKS: dict[str, str] = {
    "arith": "safekeel.tasks.arith:ArithTask",
    "sentiment": "safekeel.tasks.sentiment:SentimentTask",
    "topic": "safekeel.tasks.topic:TopicTask",
    "gsm8k": "safekeel.tasks.hub:GSM8KTask",
    "sst2": "safekeel.tasks.hub:SST2Task",
    "agnews": "safekeel.tasks.hub:AGNewsTask",
}
OFFLINE_TASKS = ("arith", "sentiment", "topic")


def is_task_name(spec: str) -> bool:
    return str(spec).strip().lower() in TASKS


def get_task(name_or_file: str) -> Task:
    """A registered task by name, or a `LocalTask` for a labelled .jsonl/.json/.csv/.parquet file."""
    spec = str(name_or_file or "").strip()
    if not spec:
        raise SafekeelError("empty task argument")
    if spec.lower() in TASKS:
        module, _, cls = TASKS[spec.lower()].partition(":")
        return getattr(importlib.import_module(module), cls)()
    if spec.lower().endswith(FILE_SUFFIXES) or Path(spec).is_file():
        from safekeel.tasks.local import LocalTask

        if not Path(spec).is_file():
            raise SafekeelError(f"task file not found: {spec}")
        return LocalTask(spec)
    raise SafekeelError(f"unknown task {spec!r}: use one of {', '.join(TASKS)} or a labelled .jsonl/.csv/.parquet file")


__all__ = ["OFFLINE_TASKS", "TASKS", "Task", "TaskExample", "get_task", "is_task_name"]
