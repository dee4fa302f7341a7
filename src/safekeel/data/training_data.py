"""Training data: one loader that turns every accepted input into chat rows.

Accepted specs (`load_training_data(spec)`):
- a task name (`arith`, `sentiment`, `topic`, `gsm8k`, `sst2`, `agnews`): its train split;
- a harmful set name (`strongreject-harmful`, `advbench`, `beavertails`; `strongreject-harmful:all`): rows
  flagged harmful (`safekeel.data.harmful.load_harmful`; `strongreject-harmful` holds the answers to
  StrongREJECT's training part only, 170 rows);
- a local .jsonl/.json/.csv/.parquet file whose rows hold either `messages` (a list of
  {"role": system|user|assistant, "content": str}; a JSON string in CSV) or a prompt and a response:
  prompt from `prompt`, `question` or `instruction` (+ " " + `input`, the Alpaca/PACT layout), response
  from `response`, `completion`, `output` or `answer`; optional `system`, `id`, `harmful`, `source`;
- `hf:ORG/NAME[:SPLIT]` or `ORG/NAME`: a hub dataset with the same fields (needs network).

Every row comes back as {"id", "messages", "harmful", "source"}; the files `safekeel data mix` and
`make-task` write are in that form and load back unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safekeel.data.records import normalise_rows, task_rows
from safekeel.errors import SafekeelError
from safekeel.rows import FILE_SUFFIXES, hub_spec_parts, is_hub_spec, read_rows

log = logging.getLogger(__name__)


def load_training_data(spec: str, *, n: int | None = None, seed: int = 0, system: str | None = None) -> list[dict]:
    """Normalised training rows for `spec` (see the module docstring); `n` keeps the first n rows."""
    from safekeel.data import harmful
    from safekeel.tasks import get_task, is_task_name

    spec = str(spec or "").strip()
    if not spec:
        raise SafekeelError("empty training-data argument")
    if n is not None and n <= 0:
        raise SafekeelError(f"number of rows must be positive, got {n}")
    if is_task_name(spec):
        task = get_task(spec)
        rows = task_rows(task.examples("train", n, seed), task.name, system=system)
    elif harmful.is_harmful_set(spec):
        rows = normalise_rows(harmful.load_harmful(spec), spec, harmful=True, system=system)
    elif spec.lower().endswith(FILE_SUFFIXES) or Path(spec).exists():
        path = Path(spec)
        if not path.is_file():
            raise SafekeelError(f"training data file not found: {spec}")
        rows = normalise_rows(read_rows(path), path.stem, system=system)
    elif is_hub_spec(spec):
        from safekeel.rows import load_hub_rows  # looked up on each call, so tests can replace it

        repo, split = hub_spec_parts(spec)
        rows = normalise_rows(load_hub_rows(repo, None, split), repo.replace("/", "_"), system=system)
    else:
        raise SafekeelError(f"unknown training data {spec!r}: use a task name, a harmful set, a .jsonl/.csv/.parquet "
                            "file with messages or prompt/response fields, or a hub dataset id")
    if n is not None and n > len(rows):
        log.warning("asked for %d rows of %s, which has %d: training on all %d", n, spec, len(rows), len(rows))
    return rows[:n] if n is not None else rows
