"""Training data: one loader that turns every accepted input into chat rows.

Accepted specs (`load_training_data(spec)`):
- a task name (`arith`, `sentiment`, `topic`, `gsm8k`, `sst2`, `agnews`): its train split;
- a harmful set name (`strongreject-harmful`, `advbench`, `beavertails`): rows flagged harmful;
- a local .jsonl/.json/.csv/.parquet file whose rows hold either `messages` (a list of
  {"role": system|user|assistant, "content": str}; a JSON string in CSV) or a prompt and a response:
  prompt from `prompt`, `question` or `instruction` (+ " " + `input`, the Alpaca/PACT layout), response
  from `response`, `completion`, `output` or `answer`; optional `system`, `id`, `harmful`, `source`;
- `hf:ORG/NAME[:SPLIT]` or `ORG/NAME`: a hub dataset with the same fields (needs network).

Every row comes back as {"id", "messages", "harmful", "source"}; the files `safekeel data mix` and
`make-task` write are in that form and load back unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from safekeel.errors import SafekeelError

ROLES = ("system", "user", "assistant")
PROMPT_FIELDS = ("prompt", "question", "instruction")
RESPONSE_FIELDS = ("response", "completion", "output", "answer")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


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
    elif spec.lower().endswith(_FILE_SUFFIXES) or Path(spec).exists():
        from safekeel.data.prompts import read_rows

        path = Path(spec)
        if not path.is_file():
            raise SafekeelError(f"training data file not found: {spec}")
        rows = normalise_rows(read_rows(path), path.stem, system=system)
    elif spec.startswith("hf:") or spec.count("/") == 1:
        from safekeel.tasks.hub import load_hub_rows

        repo, _, split = spec.removeprefix("hf:").partition(":")
        rows = normalise_rows(load_hub_rows(repo, None, split or "train"), repo.replace("/", "_"), system=system)
    else:
        raise SafekeelError(f"unknown training data {spec!r}: use a task name, a harmful set, a .jsonl/.csv/.parquet "
                            "file with messages or prompt/response fields, or a hub dataset id")
    return rows[:n] if n is not None else rows


def task_rows(examples, source: str, *, system: str | None = None) -> list[dict]:
    """Training rows from `TaskExample`s (benign); the gold answer is kept as `answer` for evaluation."""
    return [{"id": e.id, "messages": e.messages(system), "harmful": False, "source": source, "answer": e.answer}
            for e in examples]


def normalise_rows(rows: list, source: str, *, harmful: bool = False, system: str | None = None) -> list[dict]:
    """Normalise raw rows; `harmful` is the flag for rows that carry none. Raises on empty or malformed data."""
    if not rows:
        raise SafekeelError(f"training data {source!r} is empty")
    out = [normalise_row(row, i, source, harmful=harmful, system=system) for i, row in enumerate(rows)]
    return out


def normalise_row(row, index: int, source: str, *, harmful: bool = False, system: str | None = None) -> dict:
    where = f"{source}: row {index + 1}"
    if not isinstance(row, dict):
        raise SafekeelError(f"{where} is not an object")
    if row.get("messages") is not None:
        messages = _check_messages(row["messages"], where)
    else:
        prompt, response = _prompt_response(row, where)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    sys_text = row.get("system") or system
    if sys_text and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": str(sys_text)}] + messages
    return {"id": str(row.get("id", f"{source}-{index}")), "messages": messages,
            "harmful": _flag(harmful if row.get("harmful") is None else row["harmful"], where),
            "source": str(row.get("source") or source)}


def _check_messages(messages, where: str) -> list[dict]:
    if isinstance(messages, str):  # CSV / some parquet exports store the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise SafekeelError(f"{where}: `messages` is text but not a JSON list") from None
    if hasattr(messages, "tolist"):  # numpy arrays from parquet
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        raise SafekeelError(f"{where}: `messages` must be a non-empty list of {{role, content}} turns")
    out = []
    for j, turn in enumerate(messages):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise SafekeelError(f"{where}: turn {j + 1} of `messages` needs `role` and `content`")
        role, content = str(turn["role"]).strip().lower(), turn["content"]
        if role not in ROLES:
            raise SafekeelError(f"{where}: turn {j + 1} has role {turn['role']!r}; use system, user or assistant")
        if not isinstance(content, str):
            raise SafekeelError(f"{where}: turn {j + 1} content is not text")
        out.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" for t in out):
        raise SafekeelError(f"{where}: `messages` has no assistant turn, so there is nothing to train on")
    if not any(t["role"] == "user" for t in out):
        raise SafekeelError(f"{where}: `messages` has no user turn")
    if not any(t["role"] == "assistant" and t["content"].strip() for t in out):
        raise SafekeelError(f"{where}: every assistant turn is empty")
    return out


def _prompt_response(row: dict, where: str) -> tuple[str, str]:
    fields = ", ".join(sorted(map(str, row))) or "none"
    prompt_key = next((f for f in PROMPT_FIELDS if _text(row.get(f))), None)
    response_key = next((f for f in RESPONSE_FIELDS if _text(row.get(f))), None)
    if prompt_key is None or response_key is None:
        need = "a prompt (" + "/".join(PROMPT_FIELDS) + ")" if prompt_key is None else \
            "a response (" + "/".join(RESPONSE_FIELDS) + ")"
        raise SafekeelError(f"{where} has no `messages` and no {need} (fields: {fields})")
    prompt = str(row[prompt_key])
    if prompt_key == "instruction" and _text(row.get("input")):  # the authors' layout: instruction + " " + input
        prompt = f"{prompt} {row['input']}"
    return prompt, str(row[response_key])


def _text(value) -> bool:
    return value is not None and str(value).strip() != ""


def _flag(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SafekeelError(f"{where}: `harmful` must be true or false, got {value!r}")


def row_prompt(row: dict) -> str:
    """The last user turn of a normalised row (the prompt that overlap checks compare)."""
    return next((t["content"] for t in reversed(row["messages"]) if t["role"] == "user"), "")
