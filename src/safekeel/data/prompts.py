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

from pathlib import Path

from safekeel.data.records import PromptRecord
from safekeel.errors import SafekeelError
from safekeel.rows import (
    FILE_SUFFIXES,
    check_local_or_hub,
    hub_spec_parts,
    is_hub_spec,
    read_rows,
)

PACKAGED_SETS = ("harmbench", "harmbench-val", "strongreject", "strongreject-small", "everyday", "benign-risky",
                 "instructions")
HARMBENCH_SUBSETS = ("standard", "contextual", "copyright", "all")


def prompt_spec(spec: str | None, flag: str = "--prompts") -> str:
    """A prompt-set argument (see the module docstring) checked without fetching anything."""
    if spec is None or not str(spec).strip():
        raise SafekeelError(f"{flag} is empty")
    spec = str(spec).strip()
    base, _, option = spec.partition(":")
    if base in ("harmbench", "harmbench-val"):
        if option and option not in HARMBENCH_SUBSETS:
            raise SafekeelError(f"{flag}: unknown HarmBench subset {option!r}; use standard, contextual, copyright or all")
        return spec
    if base in PACKAGED_SETS and not option:
        return spec
    if check_local_or_hub(spec, flag):
        return spec
    raise SafekeelError(f"{flag}: unknown prompt set {spec!r}: use one of {', '.join(PACKAGED_SETS)}, "
                        "a .jsonl/.csv/.parquet file or a hub dataset id")


def benchmark_name(spec: str) -> str:
    """The short name results are filed under: a file's stem, or the packaged/hub name."""
    path = Path(spec)
    if spec.lower().endswith(FILE_SUFFIXES):
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
    elif spec.lower().endswith(FILE_SUFFIXES) or Path(spec).exists():
        records = _records_from_rows(read_rows(Path(spec)), prompt_field, str(Path(spec)))
    elif spec.startswith((".", "/", "~")):
        raise SafekeelError(f"prompt file not found: {spec}")
    elif is_hub_spec(spec):
        records = _hub(spec, prompt_field)
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

    if functional not in HARMBENCH_SUBSETS:
        raise SafekeelError(f"unknown HarmBench subset {functional!r}; use standard, contextual, copyright or all")
    rows = read_rows(harmbench_csv(split))
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
    rows = read_rows(strongreject_csv(small=small))
    return [PromptRecord(f"{name}-{i}", row["forbidden_prompt"], row.get("category") or "uncategorized", name,
                         {"origin": row.get("source", "")}) for i, row in enumerate(rows)]


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


def _hub(spec: str, prompt_field: str) -> list[PromptRecord]:
    # the hub loader fails at once, with one clear line, when the hub is unreachable
    from safekeel.rows import load_hub_rows  # looked up on each call, so tests can replace it

    repo, split = hub_spec_parts(spec)
    rows = load_hub_rows(repo, None, split, what=f"prompt set {repo!r}")
    return _records_from_rows(rows, prompt_field, f"hf:{repo}")
