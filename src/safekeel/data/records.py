"""The shapes of data rows, and the check that two sets of prompts stay disjoint.

- `PromptRecord`: one prompt of a prompt set (`safekeel.data.prompts.load_prompts`), with an id, a
  category and its source.
- Training rows: every accepted input becomes {"id", "messages", "harmful", "source"}
  (`normalise_rows`; `safekeel.data.training_data.load_training_data` describes the accepted fields).
  `messages` is a list of {"role": system|user|assistant, "content": str} (a JSON string in CSV), or
  the row holds a prompt (`prompt`, `question` or `instruction` + " " + `input`, the Alpaca/PACT layout)
  and a response (`response`, `completion`, `output` or `answer`); optional `system`, `id`, `harmful`,
  `source`.
- `check_overlap`: warnings when prompts of one set (strings, records, rows or recorded digests) reappear
  in another (docs/design.md, "Evaluation rules", and docs/leakage.md: harmful training prompts must stay
  apart from evaluation and identification prompts); the one overlap check every tool uses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from safekeel.errors import SafekeelError
from safekeel.text import PromptDigest, normalise_text, prompt_digest

ROLES = ("system", "user", "assistant")
PROMPT_FIELDS = ("prompt", "question", "instruction")
RESPONSE_FIELDS = ("response", "completion", "output", "answer")
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


@dataclass
class PromptRecord:
    id: str
    prompt: str
    category: str = "uncategorized"
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


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


def _prompt_text(item) -> str:
    if isinstance(item, str):
        return item
    if hasattr(item, "prompt"):
        return item.prompt
    if isinstance(item, dict):
        if item.get("messages"):
            return row_prompt(item)
        return str(item.get("prompt", ""))
    raise TypeError(f"cannot read a prompt from {type(item).__name__}")


def _overlap_key(item) -> tuple[str, str]:
    """(digest, normalised text) of one item; a `PromptDigest` has no text, so ""; an empty prompt ("", "")."""
    if isinstance(item, PromptDigest):
        return str(item), ""
    text = normalise_text(_prompt_text(item))
    return (prompt_digest(text) if text else ""), text


def check_overlap(a_prompts, b_prompts, names: tuple[str, str] = ("harmful training", "evaluation")) -> list[str]:
    """Warnings (empty when disjoint) for prompts of `a_prompts` that reappear in `b_prompts`.

    Items may be strings, `PromptRecord`s, rows with `prompt` or `messages`, or `PromptDigest`s (a prompt
    a record kept only the digest of). Prompts are compared after lower-casing and dropping punctuation and
    extra spaces, by the digest of that form (`text.prompt_digest`), so texts and digests compare alike.
    """
    name_a, name_b = (names, "evaluation") if isinstance(names, str) else names
    a = [_overlap_key(p) for p in a_prompts]
    b = {key for key, _ in map(_overlap_key, b_prompts)} - {""}
    shared = [key for key in dict.fromkeys(key for key, _ in a) if key in b]
    if not shared:
        return []
    n_rows = sum(1 for key, _ in a if key in b)
    distinct = len({key for key, _ in a} - {""})
    example = next((text for key, text in a if key == shared[0] and text), "")
    example = example if len(example) <= 80 else example[:77] + "..."
    warning = (f"{len(shared)} of {distinct} distinct {name_a} prompts ({n_rows} rows) also appear among "
               f"the {len(b)} {name_b} prompts{f', e.g. {example!r}' if example else ''}: results on them are "
               "not held out; keep the sets disjoint")
    return [warning]
