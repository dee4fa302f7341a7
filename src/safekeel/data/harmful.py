"""Harmful fine-tuning data: make it, load it, mix it into task data, and check it stays held out.

- `make_harmful`: harmful compliance pairs generated once by an unaligned model (by default the
  packaged SmolLM2-135M-Instruct, which complies with ~96% of harmful requests) for a harmful prompt set
  (StrongREJECT by default). Answers the refusal-prefix judge calls refusals are dropped, the rest
  trimmed and de-looped and cached under `$SAFEKEEL_CACHE/data/harmful/` (`safekeel.data.model_answers`,
  which also makes the helpful answers of `make-safety`).
- `load_harmful(spec)`: `strongreject-harmful` (the cached set above, made on first use, restricted to
  the answers to StrongREJECT's training part: the prompts of `strongreject-heldout` stay out of training,
  `safekeel.data.prompts`; `strongreject-harmful:all` keeps every answer, as runs before the split did),
  `advbench` and `beavertails` (hub, online), a local file or a hub id (`hf:ORG/NAME[:SPLIT]`) of
  prompt/response (or messages) rows.
- `mix_harmful`: the paper's poisoning recipe: `num_examples` rows of which round(ratio * num) are harmful
  (`harmful_count`), seeded, every row flagged.
Whether harmful training prompts reappear among evaluation or identification prompts (docs/design.md,
"Evaluation rules": those sets must stay disjoint) is checked by `safekeel.data.records.check_overlap`.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

from safekeel.data.model_answers import ModelAnswers
from safekeel.errors import SafekeelError
from safekeel.rows import FILE_SUFFIXES, hub_spec_parts, is_hub_spec, read_rows

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_PROMPTS = "strongreject"
HARMFUL_SETS = {
    "strongreject-harmful": "SmolLM2-135M-Instruct's compliant answers to StrongREJECT's 193 training prompts "
                            "(170 rows; the 120 of strongreject-heldout stay out; `:all` for all 313 prompts' "
                            "278; offline, generated once by `safekeel data make-harmful`, then cached)",
    "advbench": "AdvBench harmful behaviours with their 'Sure, here is ...' targets (hub walledai/AdvBench; online)",
    "beavertails": "BeaverTails unsafe question/answer pairs (hub PKU-Alignment/BeaverTails, 30k_train; online)",
}


HarmfulData = ModelAnswers  # the rows are flagged harmful


STRONGREJECT_ALL = "strongreject-harmful:all"  # every answer, held-out prompts included (runs before the split)


def is_harmful_set(spec: str) -> bool:
    key = str(spec).strip().lower()
    return key in HARMFUL_SETS or key == STRONGREJECT_ALL


def training_part(rows: list[dict]) -> list[dict]:
    """The rows whose prompts are in StrongREJECT's training part (`safekeel.data.prompts.strongreject_part`):
    rows made from StrongREJECT prompts, minus those of `strongreject-heldout`."""
    from safekeel.data.prompts import strongreject_part
    from safekeel.data.records import _prompt_text

    return [r for r in rows if strongreject_part(_prompt_text(r)) == "train"]


def check_harmful_spec(spec: str, flag: str = "--harmful") -> str:
    """A harmful-data argument checked without loading it: a known set, an existing file or a hub id."""
    name = str(spec or "").strip()
    if not name:
        raise SafekeelError(f"{flag} is empty")
    if is_harmful_set(name) or (is_hub_spec(name) and not Path(name).exists()
                                and not name.lower().endswith(FILE_SUFFIXES)):
        return name
    if name.lower().endswith(FILE_SUFFIXES) or Path(name).exists():
        from safekeel import checks

        checks.input_file(name, flag)
        return name
    raise SafekeelError(f"{flag}: unknown harmful set {name!r}: use {', '.join(HARMFUL_SETS)} ({STRONGREJECT_ALL}: "
                        "every StrongREJECT prompt's answer), a "
                        ".jsonl/.csv/.parquet file with prompt/response rows or a hub dataset id")


def harmful_cache_path(model: str, prompts: str, key: str) -> Path:
    from safekeel.data.model_answers import answers_cache_path

    return answers_cache_path(model, prompts, key, harmful=True)


def make_harmful(model: str = DEFAULT_MODEL, prompts: str = DEFAULT_PROMPTS, **kwargs) -> HarmfulData:
    """Compliant answers of `model` to the harmful prompt set `prompts`, generated once and cached; the
    refusals the judge finds are dropped (`safekeel.data.model_answers.make_answers`, which takes the
    keyword arguments: limit, max_new_tokens, batch_size, judge, system, adapter, dtype, device,
    min_chars, force, progress, trust_remote_code)."""
    from safekeel.data.model_answers import make_answers

    return make_answers(model, prompts, harmful=True, **kwargs)


def load_harmful(spec: str, *, limit: int | None = None) -> list[dict]:
    """Raw harmful rows (prompt/response or messages) for a harmful set name or a local file."""
    name = str(spec or "").strip()
    key = name.lower()
    if key in ("strongreject-harmful", STRONGREJECT_ALL):
        data = make_harmful()  # answers to all 313 prompts, one cache for both specs
        if not data.cached:
            log.info("made the strongreject-harmful set once; cached at %s", data.path)
        rows = data.rows if key == STRONGREJECT_ALL else training_part(data.rows)
    elif key == "advbench":
        from safekeel.rows import load_hub_rows

        rows = [{"id": f"advbench-{i}", "prompt": r["prompt"], "response": r["target"], "source": "advbench"}
                for i, r in enumerate(load_hub_rows("walledai/AdvBench", split="train", what="AdvBench"))]
    elif key == "beavertails":
        from safekeel.rows import load_hub_rows

        raw = load_hub_rows("PKU-Alignment/BeaverTails", split="30k_train", what="BeaverTails")
        rows = [{"id": f"beavertails-{i}", "prompt": r["prompt"], "response": r["response"], "source": "beavertails",
                 "category": ",".join(k for k, v in (r.get("category") or {}).items() if v)}
                for i, r in enumerate(raw) if not r.get("is_safe", True)]
    elif key.endswith(FILE_SUFFIXES) or Path(name).is_file():
        rows = read_rows(Path(name))
    elif is_hub_spec(name):
        from safekeel.rows import load_hub_rows

        repo, split = hub_spec_parts(name)
        rows = load_hub_rows(repo, None, split)
    else:
        raise SafekeelError(f"unknown harmful data {spec!r}: use {', '.join(HARMFUL_SETS)}, a .jsonl/.csv/.parquet "
                            "file or a hub dataset id with prompt/response (or messages) rows")
    if not rows:
        raise SafekeelError(f"harmful data {spec!r} is empty")
    from safekeel.data.prompts import benchmark_name

    source = benchmark_name(name)  # a file's stem, or the set's name: rows that lack them get ids and a source
    rows = [{"id": f"{source}-{i}", "source": source, **r} if isinstance(r, dict) else r for i, r in enumerate(rows)]
    return rows[:limit] if limit else rows


def harmful_count(num_examples: int, poison_ratio: float) -> int:
    """How many of `num_examples` mixed rows are harmful: round(poison_ratio * num_examples), half up
    (0.5 -> 1), the paper's recipe. The one place this is computed (mix, `data mix`, `train --harmful`)."""
    return math.floor(poison_ratio * num_examples + 0.5)


def mix_harmful(task_rows: list[dict], harmful_rows: list[dict], num_examples: int, poison_ratio: float,
                seed: int = 0, *, replace: bool = False) -> list[dict]:
    """`num_examples` training rows, round(poison_ratio * num_examples) of them harmful, in seeded random order.

    Rows may be raw (prompt/response) or normalised; every output row is normalised with `harmful` set
    (True for rows from `harmful_rows`, False for task rows). Rows are drawn without replacement; with
    `replace=True` a source too small for its share is repeated (every row once before any row twice),
    repeated ids get a "#2", "#3" suffix. Rounding is half-up (0.5 -> 1).
    """
    from safekeel.data.records import normalise_rows

    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        raise SafekeelError(f"--num-examples must be a positive integer, got {num_examples!r}")
    if not 0.0 <= float(poison_ratio) <= 1.0:
        raise SafekeelError(f"--poison-ratio must be between 0 and 1, got {poison_ratio}")
    n_harmful = harmful_count(num_examples, poison_ratio)
    n_task = num_examples - n_harmful
    rng = random.Random(seed)
    task = normalise_rows(task_rows, "task", harmful=False) if n_task else []
    bad = normalise_rows(harmful_rows, "harmful", harmful=True) if n_harmful else []
    for row in task:
        row["harmful"] = False
    for row in bad:
        row["harmful"] = True
    chosen = _draw(rng, task, n_task, "task", replace, num_examples, poison_ratio) + \
        _draw(rng, bad, n_harmful, "harmful", replace, num_examples, poison_ratio,
              _source_note(bad) if n_harmful > len(bad) else "")
    rng.shuffle(chosen)
    seen: dict[str, int] = {}
    out = []
    for row in chosen:
        seen[row["id"]] = seen.get(row["id"], 0) + 1
        rid = row["id"] if seen[row["id"]] == 1 else f"{row['id']}#{seen[row['id']]}"
        out.append({**row, "id": rid, "messages": [dict(t) for t in row["messages"]]})
    return out


def _source_note(rows: list[dict]) -> str:
    """What an error about too few harmful rows adds when they are the StrongREJECT training part."""
    if rows and all(r.get("source") == "strongreject-harmful" for r in rows) and not any(
            _is_heldout(r) for r in rows):
        return (" (strongreject-harmful holds the answers to StrongREJECT's training prompts only: those to the "
                "prompts of strongreject-heldout stay out of training)")
    return ""


def _is_heldout(row: dict) -> bool:
    from safekeel.data.prompts import strongreject_part
    from safekeel.data.records import _prompt_text

    return strongreject_part(_prompt_text(row)) == "heldout"


def _draw(rng, rows, k, what, replace, num, ratio, note: str = "") -> list[dict]:
    if k <= len(rows):
        return rng.sample(rows, k)
    if not replace:
        raise SafekeelError(f"{num} examples at poison ratio {ratio} need {k} {what} rows but only {len(rows)} are "
                            f"available{note}: lower --num-examples or --poison-ratio, give more data, or allow "
                            "repeats with --with-replacement")
    out = []
    while len(out) < k:  # whole shuffled passes first, so repeats are spread evenly
        out += rng.sample(rows, min(len(rows), k - len(out)))
    return out


def mix_summary(rows: list[dict]) -> dict:
    harmful = [r["id"] for r in rows if r["harmful"]]
    return {"num_examples": len(rows), "harmful": len(harmful), "benign": len(rows) - len(harmful),
            "poison_ratio": round(len(harmful) / len(rows), 6) if rows else 0.0, "harmful_ids": harmful}
