"""Resumable sample files: `DIR/samples_<name>.jsonl`, one row per prompt, rewritten atomically.

Every row carries `settings`, a short hash of everything that determines its answer (the model and
adapter fingerprints, the generation settings, the exact prompt text the model saw). A rerun keeps
rows whose hash and prompt match and generates only the others; after every batch the whole file is
rewritten atomically, so an interrupted run loses at most one batch. Judging is a second pass: rows
whose `judge` differs from the current judge's id, that were never judged, or whose verdict is
`error` (a judge that failed once may answer the next time) are judged again; the answers are kept.

A prompt the generator had to cut to fit the model's context gets `truncated: {"prompt_tokens",
"kept_tokens"}` in its row, and `fill` logs one warning line per prompt set saying how many were cut.
An answer that used every one of `max_new_tokens` without reaching an end token gets `cut_off: true`
(false when it finished; absent when the generator does not say): task scores report that share.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from safekeel.fingerprint import sha256_json
from safekeel.io_utils import atomic_write_jsonl

log = logging.getLogger(__name__)


def settings_key(fingerprint: dict, generation: dict, text: str) -> str:
    """Hash of what determines one answer: model + adapter hashes, generation settings, prompt text."""
    model = {k: fingerprint.get(k) for k in ("sha256", "adapter_sha256")}
    return sha256_json({"model": model, "generation": generation, "text": text})[:16]


def read_samples(path: Path) -> list[dict]:
    """Rows of a sample file; a torn last line (a crash outside our atomic writes) is ignored."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping an unreadable line", path)
    return rows


class SampleStore:
    """The sample rows of one prompt set, keyed by record id, in the order of `records`.

    records: dicts with at least `id` and `prompt` (any other fields are copied into the rows);
    texts: the formatted text the model sees for each record; generation: settings recorded in the key.
    """

    def __init__(self, path: Path, records: Sequence[dict], texts: Sequence[str], fingerprint: dict,
                 generation: dict, *, overwrite: bool = False):
        if len(records) != len(texts):
            raise ValueError("one formatted text per record")
        ids = [str(r["id"]) for r in records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            from safekeel.errors import SafekeelError

            raise SafekeelError(f"{path.name}: duplicate prompt id {dup!r}; ids must be unique")
        self.path = Path(path)
        self.records = list(records)
        self.texts = dict(zip(ids, texts))
        self.keys = {i: settings_key(fingerprint, generation, t) for i, t in zip(ids, texts)}
        self.rows: dict[str, dict] = {}
        self.reused = 0
        if not overwrite:
            for row in read_samples(self.path):
                rid = str(row.get("id"))
                if rid in self.keys and row.get("settings") == self.keys[rid] and "response" in row:
                    self.rows[rid] = row
            self.reused = len(self.rows)

    # -- generation -------------------------------------------------------------------------------
    def missing(self) -> list[dict]:
        return [r for r in self.records if str(r["id"]) not in self.rows]

    def fill(self, generate: Callable[[list[str]], list[str]], batch_size: int, *, desc: str = "",
             progress: bool = True) -> float:
        """Generate answers for missing rows, `batch_size` at a time, saving after every batch.

        Missing records are sorted by text length so each batch pads little. Returns seconds spent.
        """
        todo = sorted(self.missing(), key=lambda r: len(self.texts[str(r["id"])]), reverse=True)
        if not todo:
            return 0.0
        t0 = time.perf_counter()
        n_cut, budget = 0, None
        bar = tqdm(total=len(todo), desc=desc or self.path.stem, disable=not progress, leave=False)
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                answers = generate([self.texts[str(r["id"])] for r in chunk])
                cut = getattr(answers, "truncated", None) or {}  # safekeel.generation.Answers
                stopped = getattr(answers, "cut_off", None)  # None: the generator does not say
                budget = getattr(answers, "budget", budget)
                n_cut += len(cut)
                for i, (rec, answer) in enumerate(zip(chunk, answers)):
                    rid = str(rec["id"])
                    row = {**rec, "id": rid, "response": answer, "settings": self.keys[rid]}
                    if i in cut:
                        row["truncated"] = {"prompt_tokens": cut[i], "kept_tokens": budget}
                    if stopped is not None:
                        row["cut_off"] = i in stopped
                    self.rows[rid] = row
                self.save()
                bar.update(len(chunk))
        finally:
            bar.close()
        if n_cut:
            from safekeel.generation import truncation_message

            log.warning("%s: %s", desc or self.path.stem, truncation_message(n_cut, len(todo), budget))
        return time.perf_counter() - t0

    # -- judging ----------------------------------------------------------------------------------
    def unjudged(self, judge_id: str, rejudge: bool = False) -> list[dict]:
        """Rows to judge: all when `rejudge`, else those without a safe/unsafe verdict by `judge_id`."""
        return [row for row in self.ordered()
                if rejudge or row.get("judge") != judge_id or row.get("verdict") not in ("safe", "unsafe")]

    def judge(self, judge, *, chunk: int = 64, rejudge: bool = False, refusal_fn=None) -> float:
        """Judge rows not yet judged by `judge` (all rows when `rejudge`), saving after every chunk.

        `refusal_fn(response) -> bool` fills `refusal` when the judge reports none (e.g. Llama Guard)."""
        todo = self.unjudged(judge.id, rejudge)
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            verdicts = judge([r["prompt"] for r in part], [r["response"] for r in part])
            for row, v in zip(part, verdicts):
                details = dict(v.details)
                refusal = details.pop("refusal", None)
                if refusal is None and refusal_fn is not None:
                    refusal = refusal_fn(row["response"])
                row.update(verdict=v.verdict, score=v.score, refusal=bool(refusal), judge=judge.id,
                           judge_details=details)
            self.save()
        return time.perf_counter() - t0 if todo else 0.0

    # -- io ---------------------------------------------------------------------------------------
    def ordered(self) -> list[dict]:
        return [self.rows[str(r["id"])] for r in self.records if str(r["id"]) in self.rows]

    def save(self) -> None:
        atomic_write_jsonl(self.path, self.ordered())
