"""Resumable sample files: `DIR/samples_<name>.jsonl`, one row per prompt, rewritten atomically.

Every row carries `settings`, a short hash of everything that determines its answer (the model and
adapter fingerprints, the generation settings, the exact prompt text the model saw). A rerun keeps
rows whose hash and prompt match and generates only the others; after every batch the whole file is
rewritten atomically, so an interrupted run loses at most one batch. Judging is a second pass, one
judge at a time: a judge judges the rows that hold no `safe`/`unsafe` verdict of its own (never judged
by it, or `error`: a judge that failed once may answer the next time); the answers are kept.

A row keeps every judge's verdict it was given, keyed by judge id: `verdicts` {id: safe|unsafe|error},
`scores` {id: score} (judges that give one) and `verdict_details` {id: the judge's details}. The first
(primary) judge's verdict is also in the row's own fields, as with one judge: `verdict`, `score`,
`refusal`, `judge`, `judge_details`. So adding a judge to a finished evaluation judges only for the new
judge, and switching the primary judge to one that already judged the rows copies its verdicts into
those fields without judging. Rows written before `verdicts` existed count as judged by their `judge`.

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

JUDGED = ("safe", "unsafe")
MAPS = ("verdicts", "scores", "verdict_details")  # per-judge fields of a row, keyed by judge id


def settings_key(fingerprint: dict, generation: dict, text: str) -> str:
    """Hash of what determines one answer: model + adapter hashes, generation settings, prompt text."""
    model = {k: fingerprint.get(k) for k in ("sha256", "adapter_sha256")}
    return sha256_json({"model": model, "generation": generation, "text": text})[:16]


def stored_verdicts(row: dict) -> dict[str, str]:
    """{judge id: verdict} of a sample row: its `verdicts`, plus its own `judge`/`verdict` (the only
    verdict of rows written before `verdicts` existed)."""
    out = {str(k): v for k, v in (row.get("verdicts") or {}).items()}
    if row.get("judge") and "verdict" in row:
        out.setdefault(str(row["judge"]), row["verdict"])
    return out


def _migrate(row: dict) -> None:
    """Copy the row's own (primary) judgement into the per-judge fields when they lack it (rows written
    before they existed), so it survives the row's fields being taken over by another judge."""
    jid = row.get("judge")
    if not jid or "verdict" not in row or jid in (row.get("verdicts") or {}):
        return
    row.setdefault("verdicts", {})[jid] = row["verdict"]
    if row.get("score") is not None:
        row.setdefault("scores", {})[jid] = row["score"]
    row.setdefault("verdict_details", {})[jid] = {**(row.get("judge_details") or {}), "refusal": row.get("refusal")}


def _record(row: dict, judge_id: str, judgement) -> None:
    row.setdefault("verdicts", {})[judge_id] = judgement.verdict
    if judgement.score is not None:
        row.setdefault("scores", {})[judge_id] = judgement.score
    elif judge_id in (row.get("scores") or {}):
        del row["scores"][judge_id]
    row.setdefault("verdict_details", {})[judge_id] = dict(judgement.details)


def _apply_primary(row: dict, judge_id: str, refusal_fn) -> None:
    """Fill the row's own verdict fields from `judge_id`'s stored judgement (the one-judge layout)."""
    details = dict((row.get("verdict_details") or {}).get(judge_id) or {})
    refusal = details.pop("refusal", None)
    if refusal is None and refusal_fn is not None:
        refusal = refusal_fn(row["response"])
    row.update(verdict=row["verdicts"][judge_id], score=(row.get("scores") or {}).get(judge_id),
               refusal=bool(refusal), judge=judge_id, judge_details=details)
    for key in MAPS:  # the per-judge fields after the primary's, in every row
        if key in row:
            row[key] = row.pop(key)


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
        return [row for row in self.ordered() if rejudge or stored_verdicts(row).get(judge_id) not in JUDGED]

    def judge(self, judge, *, chunk: int = 64, rejudge: bool = False, refusal_fn=None, primary: bool = True) -> float:
        """Judge rows not yet judged by `judge` (all rows when `rejudge`), saving after every chunk.

        `primary`: the judge's verdicts also fill the row's own fields (`verdict`, `score`, `refusal`,
        `judge`, `judge_details`), in rows it judges now and in rows it had judged before; a further
        judge (`primary=False`) only adds to `verdicts`, `scores` and `verdict_details`.
        `refusal_fn(response) -> bool` fills `refusal` when the judge reports none (e.g. Llama Guard)."""
        for row in self.rows.values():
            _migrate(row)
        todo = self.unjudged(judge.id, rejudge)
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            verdicts = judge([r["prompt"] for r in part], [r["response"] for r in part])
            for row, v in zip(part, verdicts):
                _record(row, judge.id, v)
                if primary:
                    _apply_primary(row, judge.id, refusal_fn)
            self.save()
        if primary:  # rows this judge had judged while another judge was the primary one
            stale = [row for row in self.ordered()
                     if row.get("judge") != judge.id and judge.id in (row.get("verdicts") or {})]
            for row in stale:
                _apply_primary(row, judge.id, refusal_fn)
            if stale:
                self.save()
        return time.perf_counter() - t0 if todo else 0.0

    # -- io ---------------------------------------------------------------------------------------
    def ordered(self) -> list[dict]:
        return [self.rows[str(r["id"])] for r in self.records if str(r["id"]) in self.rows]

    def save(self) -> None:
        atomic_write_jsonl(self.path, self.ordered())
