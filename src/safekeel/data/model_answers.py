"""A model's own answers to a prompt set, generated once, cleaned and cached: training data made by a model.

Two kinds of data are made this way:
- harmful compliance pairs (`safekeel data make-harmful`): an unaligned model's answers to harmful
  prompts, the rows flagged `harmful`;
- helpful answers (`safekeel data make-safety --instructions`): the original model's answers to benign
  instructions, so that an aligned counterpart trained on them keeps the original's helpfulness and style.

`make_answers` decodes greedily with the model's chat template and keeps the answers the `judge` does
not call refusals (the keyword judge by default) with at least `min_chars` characters after clean-up. The
kept rows are cached as JSONL under `$SAFEKEEL_CACHE/data/<harmful|answers>/`, keyed by a fingerprint of
the model file, the prompts and the settings, so the second call is instant; the raw answers are cached
beside them, so a change of judge, `min_chars` or clean-up never regenerates. Every cached file carries
its sha256 and is checked on read: a damaged file is rebuilt, never trained on.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.io_utils import read_jsonl
from safekeel.text import normalise_text
from safekeel.wheels import cache_dir, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # bump when rows or the filtering change, so old caches are not reused


@dataclass
class ModelAnswers:
    rows: list[dict]  # {"id", "prompt", "response", "category", "source", "harmful", "truncated"}
    path: Path  # the cached JSONL
    meta: dict  # settings, fingerprint and counts (also in <path>.meta.json)
    cached: bool  # True when read from the cache rather than generated now


def model_sha(spec: str, adapter: str | None) -> dict:
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


def answers_cache_path(model: str, prompts: str, key: str, *, harmful: bool = True) -> Path:
    from safekeel.data.prompts import benchmark_name

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if "/" in model else model)
    kind = "harmful" if harmful else "answers"
    return cache_dir() / "data" / kind / f"{benchmark_name(prompts)}-{slug}-{key[:12]}.jsonl"


def make_answers(model: str, prompts: str, *, harmful: bool, limit: int | None = None, max_new_tokens: int = 128,
                 batch_size: int = 8, judge: str = "keyword", system: str | None = None, adapter: str | None = None,
                 dtype: str = "auto", device: str = "auto", min_chars: int = 40, force: bool = False,
                 progress: bool = True, trust_remote_code: bool = False, keep: str = "answers") -> ModelAnswers:
    """Generate (or read from the cache) `model`'s answers to the prompt set `prompts` (see the module docstring).

    harmful: flag of the kept rows; their source is `<set>-harmful` (True) or `<set>-answers` (False).
    keep: "answers" keeps what the judge calls compliance; "refusals" keeps what it calls a refusal
    instead (a model's own refusals, the default safety data of the defences; source `<set>-refusals`).
    Clean-up, so that training teaches neither abrupt endings nor loops (small models often repeat
    themselves): an answer cut by `max_new_tokens` is trimmed back to its last full sentence (when that
    keeps at least half of it), then any answer is cut before the first sentence or line it repeats.
    """
    from safekeel import checks
    from safekeel.data.prompts import benchmark_name, load_prompts
    from safekeel.fingerprint import sha256_json
    from safekeel.io_utils import atomic_write_json, atomic_write_jsonl
    from safekeel.judges import get_judge
    from safekeel.models.loader import pick_device, pick_dtype
    from safekeel.models.specs import model_spec

    model_spec(model)
    checks.adapter_dir(adapter)
    if keep not in ("answers", "refusals"):
        raise SafekeelError(f"keep must be answers or refusals, got {keep!r}")
    judge_obj = get_judge(judge)  # a bad judge spec fails before the prompt set is fetched
    records = load_prompts(prompts, limit=limit)
    gen = {"raw_version": 1, "model": model_sha(model, adapter), "prompts": benchmark_name(prompts),
           "prompts_sha256": sha256_json([[r.id, r.prompt] for r in records]), "n_prompts": len(records),
           "max_new_tokens": max_new_tokens, "system": system,
           "dtype": str(pick_dtype(dtype, pick_device(device))).removeprefix("torch.")}
    settings = {**gen, "version": FORMAT_VERSION, "judge": judge_obj.id, "min_chars": min_chars}
    if not harmful:  # the keys of harmful sets made before helpful answers existed stay valid
        settings["harmful"] = False
    if keep == "refusals":
        settings["keep"] = "refusals"
    key = sha256_json(settings)
    path = answers_cache_path(model, prompts, key, harmful=harmful)
    if keep == "refusals":
        path = path.with_name("refusals-" + path.name)
    meta_path = path.with_name(path.name + ".meta.json")
    if path.is_file() and not force:
        cached = _verified_cache(path, meta_path)
        if cached is not None:
            return ModelAnswers(cached[0], path, cached[1], cached=True)

    gen_path = answers_cache_path(model, prompts, sha256_json(gen), harmful=harmful)
    raw_path = gen_path.with_name("raw-" + gen_path.name)
    wall = None
    raw = _verified_rows(raw_path) if raw_path.is_file() and not force else None
    if raw is None:
        t0 = time.perf_counter()
        raw = _generate_raw(records, model, adapter, dtype, device, trust_remote_code, system, max_new_tokens,
                            batch_size, progress, "harmful answers" if harmful else "answers")
        wall = time.perf_counter() - t0
        atomic_write_jsonl(raw_path, raw)
        atomic_write_json(_sidecar(raw_path), {"sha256": sha256_file(raw_path), "rows": len(raw)})
    source = f"{benchmark_name(prompts)}-{'refusals' if keep == 'refusals' else 'harmful' if harmful else 'answers'}"
    rows, refused, short = _clean(raw, judge_obj, max_new_tokens, min_chars, source, harmful, keep)
    meta = {"fingerprint": key, **settings, "n_generated": len(raw), "n_refused": refused, "n_short": short,
            "n_kept": len(rows), "generation_s": round(wall, 1) if wall is not None else None,
            "raw_answers": str(raw_path), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    log.info("%s: kept %d of %d answers (%d refusals, %d too short)", source, len(rows), len(raw), refused, short)
    if not rows and keep == "refusals":
        raise SafekeelError(f"{model} refused none of the {len(raw)} prompts of {prompts}: no refusals to keep "
                            "(is it safety-aligned?)")
    if not rows:
        raise SafekeelError(f"{model} refused every prompt of {prompts} (or answered in under {min_chars} "
                            "characters): no answers to keep" + ("; use an unaligned model" if harmful else ""))
    atomic_write_jsonl(path, rows)
    atomic_write_json(meta_path, {**meta, "rows_sha256": sha256_file(path)})
    return ModelAnswers(rows, path, meta, cached=False)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _verified_rows(path: Path) -> list[dict] | None:
    """The rows of a cached raw-answer file when its bytes match the checksum written with it, else None
    (with a warning: the answers are generated again rather than trained on half a file)."""
    try:
        rec = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if rec["sha256"] == sha256_file(path):
            return read_jsonl(path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("%s is incomplete or changed (checksum mismatch); generating the answers again", path)
    return None


def _verified_cache(path: Path, meta_path: Path) -> tuple[list[dict], dict] | None:
    """(rows, meta) of a cached answer set whose bytes match the sha256 in its meta file, else None."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if isinstance(meta, dict) and meta.get("rows_sha256") == sha256_file(path):
            return read_jsonl(path), meta
    except (OSError, ValueError):
        pass
    log.warning("the cached answer set %s is incomplete or changed (checksum mismatch); rebuilding it", path)
    return None


def _generate_raw(records, model, adapter, dtype, device, trust_remote_code, system, max_new_tokens, batch_size,
                  progress, desc) -> list[dict]:
    """Greedy answers for every record, with their token counts (to tell answers cut by the limit)."""
    from safekeel.chat import format_prompt
    from safekeel.generation import generate
    from safekeel.models.loader import load_model

    lm, tok = load_model(model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    texts = [format_prompt(tok, r.prompt, system) for r in records]
    answers = generate(lm, tok, texts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                       desc=desc)
    return [{"id": r.id, "prompt": r.prompt, "category": r.category, "response": a,
             "n_tokens": len(tok(a, add_special_tokens=False)["input_ids"])} for r, a in zip(records, answers)]


def _clean(raw: list[dict], judge_obj, max_new_tokens: int, min_chars: int, source: str, harmful: bool = True,
           keep: str = "answers"):
    """(kept rows, refusals, too short): the judge's non-refusals (or, keep="refusals", its refusals),
    trimmed and de-looped. A judge error is never kept."""
    verdicts = judge_obj([r["prompt"] for r in raw], [r["response"] for r in raw])
    rows, refused, short = [], 0, 0
    for r, verdict in zip(raw, verdicts):
        if verdict.verdict != "unsafe":  # a refusal (or a judge error)
            refused += 1
        if verdict.verdict != ("safe" if keep == "refusals" else "unsafe"):
            continue
        truncated = r["n_tokens"] >= max_new_tokens - 1
        text = cut_repetition(trim_to_sentence(r["response"]) if truncated else r["response"].strip())
        if len(text) < min_chars:
            short += 1
            continue
        rows.append({"id": r["id"], "prompt": r["prompt"], "response": text, "category": r["category"],
                     "source": source, "harmful": harmful, "truncated": truncated})
    return rows, refused, short


# a sentence end: . ! ? after a non-digit (so "2." of a numbered list is not one), or a line break
_SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)|\n")


def trim_to_sentence(text: str) -> str:
    """Cut a truncated answer after its last full sentence or line, when that keeps at least half of it."""
    text = text.strip()
    ends = [m.end() if m.group(0) != "\n" else m.start() for m in _SENTENCE_END.finditer(text)]
    cut = max(ends, default=0)
    return text[:cut].rstrip() if cut >= len(text) // 2 else text


_UNIT = re.compile(r"[^\n]+?(?:(?<=[^\d\s])[.!?](?=\s|$)|(?=\n)|$)")  # a sentence, or a line
_LIST_MARK = re.compile(r"^(?:\d+[.)]|[-*\u2022])\s*")


def cut_repetition(text: str, min_unit: int = 20) -> str:
    """`text` up to the first sentence or line (of `min_unit`+ characters; list markers, punctuation and
    case ignored) that already occurred: a looping answer keeps its first pass only."""
    seen: set[str] = set()
    for m in _UNIT.finditer(text):
        unit = normalise_text(_LIST_MARK.sub("", m.group(0).strip()))
        if len(unit) < min_unit:
            continue
        if unit in seen:
            return text[: m.start()].rstrip()
        seen.add(unit)
    return text
