"""Rows (dicts) from local files and from the Hugging Face Hub, for prompt sets, tasks and training data.

- `read_rows(path)`: a local `.jsonl` / `.json` / `.csv` / `.parquet` file (`FILE_SUFFIXES`);
- `load_hub_rows(repo, config, split)`: a hub dataset split (needs network; fails at once, with one
  line, when the hub is unreachable);
- `is_hub_spec(spec)` / `hub_spec_parts(spec)`: the one rule for an argument naming a hub dataset,
  `hf:ORG/NAME[:SPLIT]` or `ORG/NAME[:SPLIT]`.
Every failure is one `SafekeelError` line.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from safekeel.errors import SafekeelError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def is_hub_spec(spec: str) -> bool:
    """Whether `spec` is shaped like a hub dataset id: `hf:ORG/NAME[:SPLIT]`, or `ORG/NAME[:SPLIT]` (one
    slash). Callers look for a local file first: an existing path or a file name is never a hub id."""
    return spec.startswith("hf:") or spec.count("/") == 1


def is_file_spec(spec: str) -> bool:
    """Whether an argument names a local file: a known suffix, an existing path, or a path-like start
    (`.`, `/`, `~`), so a missing file is reported as one rather than tried on the hub."""
    return spec.lower().endswith(FILE_SUFFIXES) or Path(spec).exists() or spec.startswith((".", "/", "~"))


def check_local_or_hub(spec: str, flag: str, *, nonempty: bool = False) -> bool:
    """True when `spec` names a local rows file (checked now: it exists and is readable, and with
    `nonempty` has rows, one line otherwise) or a hub dataset id (not fetched); False for anything else,
    which the caller either accepts by its own names or refuses with its own message."""
    if is_file_spec(spec):
        from safekeel.checks import input_file

        input_file(spec, flag)
        if nonempty and not read_rows(Path(spec)):  # cheap, and an empty file fails before any model loads
            raise SafekeelError(f"{flag} {spec} is empty")
        return True
    return is_hub_spec(spec)


def hub_spec_parts(spec: str) -> tuple[str, str]:
    """(repo, split) of a hub spec (`is_hub_spec`); the split is "train" unless the spec names one."""
    repo, _, split = spec.removeprefix("hf:").partition(":")
    return repo, split or "train"


def read_rows(path: Path) -> list[dict]:
    """Rows of a local .jsonl/.json/.csv/.parquet file as dicts (prompt sets, tasks and training data)."""
    path = Path(path)
    if not path.is_file():
        raise SafekeelError(f"file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise SafekeelError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data.get("data", data.get("rows")) if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise SafekeelError(f"{path}: expected a JSON list of rows (or an object with a `data` or `rows` "
                                    "list)")
            return rows
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except pyarrow.ArrowException as exc:
                raise SafekeelError(f"could not read {path}: {str(exc).splitlines()[0]}") from None
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError, OSError) as exc:
        raise SafekeelError(f"could not read {path}: {exc}") from None
    raise SafekeelError(f"unsupported file type {suffix!r} for {path}; use .jsonl, .json, .csv or .parquet")


def hub_reachable() -> bool:
    """False when the hub's host name does not even resolve (no network): fail in milliseconds instead of
    after `datasets`' ~25 s of retries. With HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set we let `datasets` try
    its local cache."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def load_hub_rows(repo: str, config: str | None = None, split: str = "train", *, what: str = "") -> list[dict]:
    """Rows of a hub dataset split as dicts; any failure (offline, unknown id/split) is one SafekeelError."""
    label = what or f"hub dataset {repo!r}"
    if not hub_reachable():
        raise SafekeelError(f"could not load {label}: the Hugging Face Hub is unreachable (offline?)")
    try:
        from datasets import load_dataset

        ds = load_dataset(repo, config, split=split) if config else load_dataset(repo, split=split)
    except Exception as exc:  # noqa: BLE001 - network errors, missing datasets or splits: one clear line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SafekeelError(f"could not load {label} ({repo}, split {split}): {first}") from None
    return [dict(r) for r in ds]
