"""What the Python API accepts, turned into what the typed functions behind the CLI take.

Every argument of `safekeel.train` & co. takes what a TRL / PEFT user has at hand as well as what the
command line takes: a model path *or* a loaded model, a data file *or* a `datasets.Dataset` / a list of
dicts, a prompt-set name *or* a list of strings, a tokens file *or* a `SafetyTokens`.

In-memory data is written once to a content-addressed JSONL file under `$SAFEKEEL_CACHE/inputs/`
(the same rows give the same file), so a run record names a file that exists, a run can be resumed,
and the checks that read files (empty data, missing columns, overlap with evaluation sets) see it as
they see a user's file. Loaded models are filed by `safekeel.models.in_memory`.
"""

from __future__ import annotations

import os

from safekeel.errors import SafekeelError
from safekeel.fingerprint import sha256_json

PathLike = (str, os.PathLike)


def model_spec_of(model, tokenizer=None, what: str = "model") -> str:
    """A spec string for `model`: a path/name as given, or a loaded model filed in memory."""
    if model is None:
        raise SafekeelError(f"{what} is required")
    if isinstance(model, PathLike):
        return os.fspath(model)
    from safekeel.models.in_memory import register

    if tokenizer is None:
        tokenizer = _tokenizer_for(model, what)
    return register(model, tokenizer)


def _tokenizer_for(model, what: str):
    """The tokenizer of a loaded model, from where it was loaded (as TRL does without a processing_class)."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "")
    if not name:
        raise SafekeelError(f"{what} is a loaded model without a recorded path: pass its tokenizer too")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise SafekeelError(f"could not load the tokenizer of {what} from {name}: {str(exc).splitlines()[0]}; "
                            "pass its tokenizer too") from None


def _rows_of(data, what: str) -> list[dict]:
    """Plain dict rows from a `datasets.Dataset`, a list/tuple of dicts, or a pandas DataFrame."""
    if type(data).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise SafekeelError(f"{what} is a DatasetDict with splits {list(data)}; pass one split, e.g. ds['train']")
    if hasattr(data, "to_dict") and hasattr(data, "columns") and not hasattr(data, "column_names"):
        data = data.to_dict(orient="records")  # a pandas DataFrame
    try:
        rows = [dict(r) for r in data]
    except (TypeError, ValueError):
        raise SafekeelError(f"{what}: expected a file, a datasets.Dataset or a list of dicts, "
                            f"got {type(data).__name__}") from None
    if not rows:
        raise SafekeelError(f"{what} is empty")
    return [_trl_row(r) for r in rows]


def _trl_row(row: dict) -> dict:
    """TRL's conversational prompt-completion rows (lists of turns) as one `messages` list."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if "messages" not in row and isinstance(prompt, list) and isinstance(completion, list):
        rest = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        return {**rest, "messages": [*prompt, *completion]}
    return row


def _write_rows(rows: list[dict], stem: str) -> str:
    """The content-addressed JSONL file holding `rows` (written once, atomically)."""
    from safekeel.io_utils import atomic_write_jsonl
    from safekeel.models.loader import cache_root

    # one directory per content, so the file keeps its plain name (a benchmark is filed under its stem)
    path = cache_root() / "inputs" / sha256_json(rows)[:16] / f"{stem}.jsonl"
    if not path.is_file():
        atomic_write_jsonl(path, rows)
    return str(path)


def data_spec_of(data, what: str = "dataset") -> str | None:
    """A data spec: a name/path/hub id as given, or in-memory rows written to a file (None stays None)."""
    if data is None or isinstance(data, PathLike):
        return None if data is None else os.fspath(data)
    return _write_rows(_rows_of(data, what), what.replace(" ", "-"))


def prompt_records(prompts, what: str = "prompts", prompt_field: str = "prompt") -> list:
    """`PromptRecord`s from a prompt-set name/file, a list of strings, dicts or records, or a Dataset."""
    from safekeel.data.prompts import load_prompts
    from safekeel.data.records import PromptRecord

    if isinstance(prompts, PathLike):
        return load_prompts(os.fspath(prompts), prompt_field=prompt_field)
    if prompts is None:
        raise SafekeelError(f"{what} is required")
    items = list(prompts) if not hasattr(prompts, "column_names") else [dict(r) for r in prompts]
    if not items:
        raise SafekeelError(f"{what} is empty")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, PromptRecord):
            out.append(item)
        elif isinstance(item, str):
            out.append(PromptRecord(f"{what}-{i}", item, source="python"))
        elif isinstance(item, dict) and isinstance(item.get(prompt_field), str):
            out.append(PromptRecord(str(item.get("id", f"{what}-{i}")), item[prompt_field],
                                    category=str(item.get("category", "uncategorized")), source="python"))
        else:
            raise SafekeelError(f"{what}[{i}]: expected a string, a PromptRecord or a dict with a "
                                f"{prompt_field!r} text, got {type(item).__name__}")
        if not out[-1].prompt.strip():
            raise SafekeelError(f"{what}[{i}] is an empty prompt")
    return out


def prompt_spec_of(prompts, what: str = "prompts") -> str:
    """A prompt-set spec: a name/path as given, or in-memory prompts written to a file."""
    if isinstance(prompts, PathLike):
        return os.fspath(prompts)
    rows = [r.to_dict() for r in prompt_records(prompts, what)]
    return _write_rows(rows, what.replace(" ", "-"))


def tokens_spec_of(tokens) -> str | None:
    """A safety-token file: a path as given, or a `SafetyTokens` saved content-addressed."""
    if tokens is None or isinstance(tokens, PathLike):
        return None if tokens is None else os.fspath(tokens)
    from safekeel.models.loader import cache_root
    from safekeel.tokens.artifact import SafetyTokens

    if not isinstance(tokens, SafetyTokens):
        raise SafekeelError(f"tokens: expected a file path or a SafetyTokens, got {type(tokens).__name__}")
    data = tokens.to_dict()
    path = cache_root() / "inputs" / f"tokens-{sha256_json(data)[:16]}.json"
    if not path.is_file():
        tokens.save(path)
    return str(path)


def results_of(results, what: str) -> dict:
    """A results mapping: a dict as given (checked), or a results file / directory read and checked."""
    from safekeel.evaluation.results import load_results
    from safekeel.evaluation.schema import validate_results

    if isinstance(results, dict):
        return validate_results(results, what)
    if isinstance(results, PathLike):
        return load_results(os.fspath(results))
    raise SafekeelError(f"{what}: expected a results file/directory or a dict, got {type(results).__name__}")
