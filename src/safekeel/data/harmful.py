"""Harmful fine-tuning data: make it, load it, mix it into task data, and check it stays held out.

- `make_harmful`: harmful compliance pairs generated once by an unaligned model (by default the
  packaged SmolLM2-135M-Instruct, which complies with ~96% of harmful requests) for a harmful prompt set
  (StrongREJECT by default). Answers the refusal-prefix judge calls refusals are dropped, the rest
  trimmed and de-looped. The kept rows are cached as JSONL under `$SAFEKEEL_CACHE/data/harmful/`, keyed
  by a fingerprint of the model file, the prompts and the settings, so the second call is instant; the
  raw answers are cached beside them, so changing the filtering never regenerates.
- `load_harmful(spec)`: `strongreject-harmful` (the cached set above, made on first use), `advbench` and
  `beavertails` (hub, online), a local file or a hub id (`hf:ORG/NAME[:SPLIT]`) of prompt/response (or
  messages) rows.
- `mix_harmful`: the paper's poisoning recipe: `num_examples` rows of which round(ratio * num) are harmful,
  seeded, every row flagged.
- `check_overlap`: warnings when harmful training prompts reappear among evaluation or identification
  prompts (DESIGN §5: those sets must stay disjoint).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.io_utils import read_jsonl
from safekeel.models.packaged import sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_PROMPTS = "strongreject"
FORMAT_VERSION = 4  # bump when rows or the filtering change, so old caches are not reused
HARMFUL_SETS = {
    "strongreject-harmful": "SmolLM2-135M-Instruct's compliant answers to the StrongREJECT prompts "
                            "(offline; generated once by `safekeel data make-harmful`, then cached)",
    "advbench": "AdvBench harmful behaviours with their 'Sure, here is ...' targets (hub walledai/AdvBench; online)",
    "beavertails": "BeaverTails unsafe question/answer pairs (hub PKU-Alignment/BeaverTails, 30k_train; online)",
}
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class HarmfulData:
    rows: list[dict]  # {"id", "prompt", "response", "category", "source", "harmful", "truncated"}
    path: Path  # the cached JSONL
    meta: dict  # settings, fingerprint and counts (also in <path>.meta.json)
    cached: bool  # True when read from the cache rather than generated now


def is_harmful_set(spec: str) -> bool:
    return str(spec).strip().lower() in HARMFUL_SETS


def check_harmful_spec(spec: str, flag: str = "--harmful") -> str:
    """A harmful-data argument checked without loading it: a known set, an existing file or a hub id."""
    name = str(spec or "").strip()
    if not name:
        raise SafekeelError(f"{flag} is empty")
    if is_harmful_set(name) or ((name.startswith("hf:") or name.count("/") == 1) and not Path(name).exists()
                                and not name.lower().endswith(_FILE_SUFFIXES)):
        return name
    if name.lower().endswith(_FILE_SUFFIXES) or Path(name).exists():
        from safekeel import checks

        checks.input_file(name, flag)
        return name
    raise SafekeelError(f"{flag}: unknown harmful set {name!r}: use {', '.join(HARMFUL_SETS)}, a "
                        ".jsonl/.csv/.parquet file with prompt/response rows or a hub dataset id")


def _model_sha(spec: str, adapter: str | None) -> dict:
    """What identifies the model's weights without loading it (same hashes as `model_fingerprint`)."""
    from safekeel.fingerprint import directory_fingerprint, file_fingerprint
    from safekeel.models.loader import resolve_source

    source = resolve_source(spec)
    if source.gguf_file:
        sha = file_fingerprint(Path(source.path) / source.gguf_file)
    elif source.kind == "local":
        sha = directory_fingerprint(source.path)
    else:  # a hub id: its revision is not known before download; the id stands in
        sha = source.spec
    return {"spec": spec, "sha256": sha,
            "adapter_sha256": directory_fingerprint(adapter, ("adapter_config.json",)) if adapter else None}


def harmful_cache_path(model: str, prompts: str, key: str) -> Path:
    from safekeel.data.prompts import benchmark_name
    from safekeel.models.packaged import cache_dir

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if "/" in model else model)
    return cache_dir() / "data" / "harmful" / f"{benchmark_name(prompts)}-{slug}-{key[:12]}.jsonl"


def make_harmful(model: str = DEFAULT_MODEL, prompts: str = DEFAULT_PROMPTS, *, limit: int | None = None,
                 max_new_tokens: int = 128, batch_size: int = 8, judge: str = "keyword", system: str | None = None,
                 adapter: str | None = None, dtype: str = "auto", device: str = "auto", min_chars: int = 40,
                 force: bool = False, progress: bool = True,
                 trust_remote_code: bool = False) -> HarmfulData:
    """Generate (or read from the cache) compliant answers of `model` to the harmful prompt set `prompts`.

    Greedy decoding, the model's chat template. Kept: answers the `judge` does not call refusals and that
    have at least `min_chars` characters after clean-up. Clean-up, so that training teaches neither abrupt
    endings nor loops (small models often repeat themselves): an answer cut by `max_new_tokens` is
    trimmed back to its last full sentence (when that keeps at least half of it), then any answer is cut
    before the first sentence or line it repeats. The raw answers are cached apart (`raw-*.jsonl`), so a
    change of judge, `min_chars` or clean-up never regenerates.
    """

    from safekeel import checks
    from safekeel.data.prompts import benchmark_name, load_prompts
    from safekeel.fingerprint import sha256_json
    from safekeel.io_utils import atomic_write_json, atomic_write_jsonl
    from safekeel.judges import get_judge
    from safekeel.models.loader import pick_device, pick_dtype

    checks.model_spec(model)
    checks.adapter_dir(adapter)
    judge_obj = get_judge(judge)  # a bad judge spec fails before the prompt set is fetched
    records = load_prompts(prompts, limit=limit)
    gen = {"raw_version": 1, "model": _model_sha(model, adapter), "prompts": benchmark_name(prompts),
           "prompts_sha256": sha256_json([[r.id, r.prompt] for r in records]), "n_prompts": len(records),
           "max_new_tokens": max_new_tokens, "system": system,
           "dtype": str(pick_dtype(dtype, pick_device(device))).removeprefix("torch.")}
    settings = {**gen, "version": FORMAT_VERSION, "judge": judge_obj.id, "min_chars": min_chars}
    key = sha256_json(settings)
    path = harmful_cache_path(model, prompts, key)
    meta_path = path.with_name(path.name + ".meta.json")
    if path.is_file() and not force:
        cached = _verified_cache(path, meta_path)
        if cached is not None:
            return HarmfulData(cached[0], path, cached[1], cached=True)

    gen_path = harmful_cache_path(model, prompts, sha256_json(gen))
    raw_path = gen_path.with_name("raw-" + gen_path.name)
    wall = None
    raw = _verified_rows(raw_path) if raw_path.is_file() and not force else None
    if raw is None:
        t0 = time.perf_counter()
        raw = _generate_raw(records, model, adapter, dtype, device, trust_remote_code, system, max_new_tokens,
                            batch_size, progress)
        wall = time.perf_counter() - t0
        atomic_write_jsonl(raw_path, raw)
        atomic_write_json(_sidecar(raw_path), {"sha256": sha256_file(raw_path), "rows": len(raw)})
    rows, refused, short = _clean(raw, judge_obj, max_new_tokens, min_chars, f"{benchmark_name(prompts)}-harmful")
    meta = {"fingerprint": key, **settings, "n_generated": len(raw), "n_refused": refused, "n_short": short,
            "n_kept": len(rows), "generation_s": round(wall, 1) if wall is not None else None,
            "raw_answers": str(raw_path), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    log.info("harmful set: kept %d of %d answers (%d refusals, %d too short)", len(rows), len(raw), refused, short)
    if not rows:
        raise SafekeelError(f"{model} refused every prompt of {prompts} (or answered in under {min_chars} "
                            "characters): no harmful compliance data to keep; use an unaligned model")
    atomic_write_jsonl(path, rows)
    atomic_write_json(meta_path, {**meta, "rows_sha256": sha256_file(path)})
    return HarmfulData(rows, path, meta, cached=False)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _verified_rows(path: Path) -> list[dict] | None:
    """The rows of a cached raw-answer file when its bytes match the checksum written with it, else None
    (with a warning: the answers are generated again rather than trained on half a file)."""
    import json

    try:
        rec = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if rec["sha256"] == sha256_file(path):
            return read_jsonl(path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("%s is incomplete or changed (checksum mismatch); generating the answers again", path)
    return None


def _verified_cache(path: Path, meta_path: Path) -> tuple[list[dict], dict] | None:
    """(rows, meta) of a cached harmful set whose bytes match the sha256 in its meta file, else None."""
    import json

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if isinstance(meta, dict) and meta.get("rows_sha256") == sha256_file(path):
            return read_jsonl(path), meta
    except (OSError, ValueError):
        pass
    log.warning("the cached harmful set %s is incomplete or changed (checksum mismatch); rebuilding it", path)
    return None


def _generate_raw(records, model, adapter, dtype, device, trust_remote_code, system, max_new_tokens, batch_size,
                  progress) -> list[dict]:
    """Greedy answers for every record, with their token counts (to tell answers cut by the limit)."""
    from safekeel.chat import format_prompt
    from safekeel.generation import generate
    from safekeel.models.loader import load_model

    lm, tok = load_model(model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    texts = [format_prompt(tok, r.prompt, system) for r in records]
    answers = generate(lm, tok, texts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                       desc="harmful answers")
    return [{"id": r.id, "prompt": r.prompt, "category": r.category, "response": a,
             "n_tokens": len(tok(a, add_special_tokens=False)["input_ids"])} for r, a in zip(records, answers)]


def _clean(raw: list[dict], judge_obj, max_new_tokens: int, min_chars: int, source: str):
    """(kept rows, refusals, too short): the judge's non-refusals, trimmed and de-looped."""
    verdicts = judge_obj([r["prompt"] for r in raw], [r["response"] for r in raw])
    rows, refused, short = [], 0, 0
    for r, verdict in zip(raw, verdicts):
        if verdict.verdict != "unsafe":  # a refusal (or a judge error): not compliance data
            refused += 1
            continue
        truncated = r["n_tokens"] >= max_new_tokens - 1
        text = _cut_repetition(_trim_to_sentence(r["response"]) if truncated else r["response"].strip())
        if len(text) < min_chars:
            short += 1
            continue
        rows.append({"id": r["id"], "prompt": r["prompt"], "response": text, "category": r["category"],
                     "source": source, "harmful": True, "truncated": truncated})
    return rows, refused, short


# a sentence end: . ! ? after a non-digit (so "2." of a numbered list is not one), or a line break
_SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)|\n")


def _trim_to_sentence(text: str) -> str:
    """Cut a truncated answer after its last full sentence or line, when that keeps at least half of it."""
    text = text.strip()
    ends = [m.end() if m.group(0) != "\n" else m.start() for m in _SENTENCE_END.finditer(text)]
    cut = max(ends, default=0)
    return text[:cut].rstrip() if cut >= len(text) // 2 else text


_UNIT = re.compile(r"[^\n]+?(?:(?<=[^\d\s])[.!?](?=\s|$)|(?=\n)|$)")  # a sentence, or a line
_LIST_MARK = re.compile(r"^(?:\d+[.)]|[-*\u2022])\s*")


def _cut_repetition(text: str, min_unit: int = 20) -> str:
    """`text` up to the first sentence or line (of `min_unit`+ characters; list markers, punctuation and
    case ignored) that already occurred: a looping answer keeps its first pass only."""
    from safekeel.tasks.base import normalise_text

    seen: set[str] = set()
    for m in _UNIT.finditer(text):
        unit = normalise_text(_LIST_MARK.sub("", m.group(0).strip()))
        if len(unit) < min_unit:
            continue
        if unit in seen:
            return text[: m.start()].rstrip()
        seen.add(unit)
    return text


def load_harmful(spec: str, *, limit: int | None = None) -> list[dict]:
    """Raw harmful rows (prompt/response or messages) for a harmful set name or a local file."""
    name = str(spec or "").strip()
    key = name.lower()
    if key == "strongreject-harmful":
        data = make_harmful()
        if not data.cached:
            log.info("made the strongreject-harmful set once; cached at %s", data.path)
        rows = data.rows
    elif key == "advbench":
        from safekeel.tasks.hub import load_hub_rows

        rows = [{"id": f"advbench-{i}", "prompt": r["prompt"], "response": r["target"], "source": "advbench"}
                for i, r in enumerate(load_hub_rows("walledai/AdvBench", split="train", what="AdvBench"))]
    elif key == "beavertails":
        from safekeel.tasks.hub import load_hub_rows

        raw = load_hub_rows("PKU-Alignment/BeaverTails", split="30k_train", what="BeaverTails")
        rows = [{"id": f"beavertails-{i}", "prompt": r["prompt"], "response": r["response"], "source": "beavertails",
                 "category": ",".join(k for k, v in (r.get("category") or {}).items() if v)}
                for i, r in enumerate(raw) if not r.get("is_safe", True)]
    elif key.endswith(_FILE_SUFFIXES) or Path(name).is_file():
        from safekeel.data.prompts import read_rows

        rows = read_rows(Path(name))
    elif name.startswith("hf:") or name.count("/") == 1:
        from safekeel.tasks.hub import load_hub_rows

        repo, _, split = name.removeprefix("hf:").partition(":")
        rows = load_hub_rows(repo, None, split or "train")
    else:
        raise SafekeelError(f"unknown harmful data {spec!r}: use {', '.join(HARMFUL_SETS)}, a .jsonl/.csv/.parquet "
                            "file or a hub dataset id with prompt/response (or messages) rows")
    if not rows:
        raise SafekeelError(f"harmful data {spec!r} is empty")
    from safekeel.data.prompts import benchmark_name

    source = benchmark_name(name)  # a file's stem, or the set's name: rows that lack them get ids and a source
    rows = [{"id": f"{source}-{i}", "source": source, **r} if isinstance(r, dict) else r for i, r in enumerate(rows)]
    return rows[:limit] if limit else rows


def mix_harmful(task_rows: list[dict], harmful_rows: list[dict], num_examples: int, poison_ratio: float,
                seed: int = 0, *, replace: bool = False) -> list[dict]:
    """`num_examples` training rows, round(poison_ratio * num_examples) of them harmful, in seeded random order.

    Rows may be raw (prompt/response) or normalised; every output row is normalised with `harmful` set
    (True for rows from `harmful_rows`, False for task rows). Rows are drawn without replacement; with
    `replace=True` a source too small for its share is repeated (every row once before any row twice),
    repeated ids get a "#2", "#3" suffix. Rounding is half-up (0.5 -> 1).
    """
    from safekeel.data.training_data import normalise_rows

    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        raise SafekeelError(f"--num-examples must be a positive integer, got {num_examples!r}")
    if not 0.0 <= float(poison_ratio) <= 1.0:
        raise SafekeelError(f"--poison-ratio must be between 0 and 1, got {poison_ratio}")
    n_harmful = math.floor(poison_ratio * num_examples + 0.5)
    n_task = num_examples - n_harmful
    rng = random.Random(seed)
    task = normalise_rows(task_rows, "task", harmful=False) if n_task else []
    bad = normalise_rows(harmful_rows, "harmful", harmful=True) if n_harmful else []
    for row in task:
        row["harmful"] = False
    for row in bad:
        row["harmful"] = True
    chosen = _draw(rng, task, n_task, "task", replace, num_examples, poison_ratio) + \
        _draw(rng, bad, n_harmful, "harmful", replace, num_examples, poison_ratio)
    rng.shuffle(chosen)
    seen: dict[str, int] = {}
    out = []
    for row in chosen:
        seen[row["id"]] = seen.get(row["id"], 0) + 1
        rid = row["id"] if seen[row["id"]] == 1 else f"{row['id']}#{seen[row['id']]}"
        out.append({**row, "id": rid, "messages": [dict(t) for t in row["messages"]]})
    return out


def _draw(rng, rows, k, what, replace, num, ratio) -> list[dict]:
    if k <= len(rows):
        return rng.sample(rows, k)
    if not replace:
        raise SafekeelError(f"{num} examples at poison ratio {ratio} need {k} {what} rows but only {len(rows)} are "
                            "available: lower --num-examples or --poison-ratio, give more data, or allow repeats "
                            "with --with-replacement")
    out = []
    while len(out) < k:  # whole shuffled passes first, so repeats are spread evenly
        out += rng.sample(rows, min(len(rows), k - len(out)))
    return out


def mix_summary(rows: list[dict]) -> dict:
    harmful = [r["id"] for r in rows if r["harmful"]]
    return {"num_examples": len(rows), "harmful": len(harmful), "benign": len(rows) - len(harmful),
            "poison_ratio": round(len(harmful) / len(rows), 6) if rows else 0.0, "harmful_ids": harmful}


def _prompt_text(item) -> str:
    if isinstance(item, str):
        return item
    if hasattr(item, "prompt"):
        return item.prompt
    if isinstance(item, dict):
        if item.get("messages"):
            from safekeel.data.training_data import row_prompt

            return row_prompt(item)
        return str(item.get("prompt", ""))
    raise TypeError(f"cannot read a prompt from {type(item).__name__}")


def check_overlap(a_prompts, b_prompts, names: tuple[str, str] = ("harmful training", "evaluation")) -> list[str]:
    """Warnings (empty when disjoint) for prompts of `a_prompts` that reappear in `b_prompts`.

    Items may be strings, `PromptRecord`s, or rows with `prompt` or `messages`. Prompts are compared after
    lower-casing and dropping punctuation and extra spaces.
    """
    from safekeel.tasks.base import normalise_text

    name_a, name_b = (names, "evaluation") if isinstance(names, str) else names
    a = [normalise_text(_prompt_text(p)) for p in a_prompts]
    b = {normalise_text(_prompt_text(p)) for p in b_prompts} - {""}
    shared = [p for p in dict.fromkeys(a) if p in b]
    if not shared:
        return []
    n_rows = sum(1 for p in a if p in b)
    example = shared[0] if len(shared[0]) <= 80 else shared[0][:77] + "..."
    warning = (f"{len(shared)} of {len(set(a) - {''})} distinct {name_a} prompts ({n_rows} rows) also appear among "
               f"the {len(b)} {name_b} prompts, e.g. {example!r}: results on them are not held out; keep the sets disjoint")
    return [warning]
