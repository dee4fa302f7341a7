"""Prompt sets: one loader for packaged benchmarks, local files and hub datasets.

Specs:
- `harmbench` (test split, standard behaviours), `harmbench:contextual` (contextual behaviours, the
  context prepended as HarmBench does), `harmbench:all`; `harmbench-val` (same suffixes);
- `strongreject` (313 prompts), `strongreject-small`;
- benign sets that ship with safekeel (`safekeel.data.benign_sets`): `everyday` and `benign-risky`
  (held out for over-refusal), `instructions` (training prompts for `data make-safety`);
- a local `.jsonl` / `.json` / `.csv` / `.parquet` file with a `prompt` field (`prompt_field` to choose
  another; `id` and `category` fields are kept when present);
- `hf:ORG/NAME[:SPLIT]` or `ORG/NAME`: a hub dataset (needs network).
Every record keeps an id, a category and its source.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safekeel.errors import SafekeelError

PACKAGED_SETS = ("harmbench", "harmbench-val", "strongreject", "strongreject-small", "everyday", "benign-risky",
                 "instructions")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class PromptRecord:
    id: str
    prompt: str
    category: str = "uncategorized"
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def benchmark_name(spec: str) -> str:
    """The short name results are filed under: a file's stem, or the packaged/hub name."""
    path = Path(spec)
    if spec.lower().endswith(_FILE_SUFFIXES):
        return path.stem
    return spec.removeprefix("hf:").replace("/", "_").replace(":", "-")


def load_prompts(spec: str, *, limit: int | None = None, prompt_field: str = "prompt") -> list[PromptRecord]:
    """Load a prompt set (see the module docstring). Raises SafekeelError on unknown/empty/malformed sets."""
    if not spec or not spec.strip():
        raise SafekeelError("empty prompt-set argument")
    base, _, option = spec.partition(":")
    if base in ("harmbench", "harmbench-val"):
        records = _harmbench("val" if base.endswith("-val") else "test", option or "standard")
    elif base in ("strongreject", "strongreject-small") and not option:
        records = _strongreject(small=base.endswith("-small"))
    elif base in ("everyday", "benign-risky", "instructions") and not option:
        from safekeel.data.benign_sets import load_benign_set

        records = load_benign_set(base)
    elif spec.lower().endswith(_FILE_SUFFIXES) or Path(spec).exists():
        records = _local_file(Path(spec), prompt_field)
    elif spec.startswith("hf:") or ("/" in spec and not Path(spec).exists()):
        if spec.startswith((".", "/", "~")):
            raise SafekeelError(f"prompt file not found: {spec}")
        records = _hub(spec.removeprefix("hf:"), prompt_field)
    else:
        raise SafekeelError(
            f"unknown prompt set {spec!r}: use one of {', '.join(PACKAGED_SETS)}, a .jsonl/.csv/.parquet file "
            "or a hub dataset id"
        )
    if limit is not None:
        if limit <= 0:
            raise SafekeelError(f"--limit must be positive, got {limit}")
        records = records[:limit]
    if not records:
        raise SafekeelError(f"prompt set {spec!r} is empty")
    return records


def _harmbench(split: str, functional: str) -> list[PromptRecord]:
    from safekeel.data.packaged_data import harmbench_csv

    if functional not in ("standard", "contextual", "copyright", "all"):
        raise SafekeelError(f"unknown HarmBench subset {functional!r}; use standard, contextual, copyright or all")
    rows = _read_csv(harmbench_csv(split))
    out = []
    for row in rows:
        kind = row.get("FunctionalCategory", "standard")
        if functional != "all" and kind != functional:
            continue
        prompt = row["Behavior"]
        context = (row.get("ContextString") or "").strip()
        if context:  # HarmBench's own format for contextual behaviours
            prompt = f"{context}\n\n---\n\n{prompt}"
        out.append(PromptRecord(row["BehaviorID"], prompt, row.get("SemanticCategory") or "uncategorized",
                                f"harmbench-{split}", {"functional_category": kind}))
    return out


def _strongreject(small: bool) -> list[PromptRecord]:
    from safekeel.data.packaged_data import strongreject_csv

    name = "strongreject-small" if small else "strongreject"
    rows = _read_csv(strongreject_csv(small=small))
    return [PromptRecord(f"{name}-{i}", row["forbidden_prompt"], row.get("category") or "uncategorized", name,
                         {"origin": row.get("source", "")}) for i, row in enumerate(rows)]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_rows(path: Path) -> list[dict]:
    """Rows of a local .jsonl/.json/.csv/.parquet file as dicts (shared with task and training data)."""
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
            return _read_csv(path)
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


def _records_from_rows(rows: list[dict], prompt_field: str, source: str) -> list[PromptRecord]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SafekeelError(f"{source}: row {i + 1} is not an object")
        if prompt_field not in row:
            fields = ", ".join(sorted(row)) or "none"
            raise SafekeelError(f"{source}: row {i + 1} has no {prompt_field!r} field (fields: {fields}); "
                                "choose one with --prompt-field")
        prompt = row[prompt_field]
        if not isinstance(prompt, str):
            raise SafekeelError(f"{source}: row {i + 1}: {prompt_field!r} must be text, got {type(prompt).__name__}")
        if not prompt.strip():
            raise SafekeelError(f"{source}: row {i + 1} has an empty {prompt_field!r}")
        rid = row.get("id")
        rid = f"{Path(source).stem}-{i}" if rid is None or str(rid).strip() == "" else str(rid)
        out.append(PromptRecord(rid, prompt, str(row.get("category") or "uncategorized"), source,
                                {k: v for k, v in row.items() if k not in (prompt_field, "id", "category")}))
    return out


def _local_file(path: Path, prompt_field: str) -> list[PromptRecord]:
    return _records_from_rows(read_rows(path), prompt_field, str(path))


def _hub(name: str, prompt_field: str) -> list[PromptRecord]:
    # the tasks' hub loader fails at once, with one clear line, when the hub is unreachable
    from safekeel.tasks.hub import load_hub_rows

    repo, _, split = name.partition(":")
    rows = load_hub_rows(repo, None, split or "train", what=f"prompt set {repo!r}")
    return _records_from_rows(rows, prompt_field, f"hf:{repo}")
