"""What the safety monitor measures (training/monitor.py; docs/monitoring.md), as plain functions.

- `resolve_prompts`: the held-out harmful prompts it probes (`--monitor-prompts`, default harmbench-val
  when already cached), minus any prompt this run trains on, spread over the set;
- `resolve_benign_prompts`: the benign prompts of the over-refusal probe (`--monitor-benign-prompts`,
  default the packaged `instructions`, never an evaluation set), minus any prompt this run trains on;
- `answer` + `judge_refusals`: the refusal probes, greedy answers judged by the refusal-prefix judge;
- `safety_mass`: the total probability the model puts on the safety tokens S, Σ_{v∈S} p(v | x, y_<t),
  with fixed answers y teacher-forced (`tokens.discrepancy.answer_probs`, the code identification uses),
  averaged over the first `first_n` answer positions and over the whole answer.
Each runs in eval mode (no dropout) and draws no random numbers, so probing never changes training.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch

from safekeel.errors import SafekeelError
from safekeel.judges.keyword import is_refusal  # looked up at call time, so tests can replace it

log = logging.getLogger(__name__)

DEFAULT_SET = "harmbench-val"
DEFAULT_BENIGN_SET = "instructions"  # packaged, offline, and not one of the over-refusal evaluation sets
FIRST_POSITIONS = 8  # "first answer positions" (paper Fig. 7): PACT's N, where its gate is open


def _default_set_cached() -> bool:
    """Whether harmbench-val can be read without a download (`safekeel eval`, `data make-safety` or the
    quickstart fetched it): a monitor that is on by default must not make training need the network."""
    from safekeel.wheels import cache_dir

    return (cache_dir() / "data" / "harmbench" / "harmbench_behaviors_text_val.csv").is_file()


def resolve_prompts(options, trained_rows: list[dict], identification_set: str | None,
                    backend: str | None = None) -> tuple[list | None, dict]:
    """(the probe prompts, or None when the monitor is off; the summary for safekeel_run.json).

    `options`: the run's MonitorOptions. Prompts this run trains on (task, harmful or safety rows) are
    dropped with a warning; an overlap with the safety tokens' identification set is only warned about.
    An explicit `--monitor-prompts` that cannot be used is an error; the default quietly turns the
    monitor off with one warning (no cached set, FSDP/DeepSpeed, nothing held out)."""
    if options.monitor_steps == 0:
        return None, {"status": "off", "why": "--monitor-steps 0"}
    explicit = options.monitor_prompts is not None
    spec = str(options.monitor_prompts).strip() if explicit else DEFAULT_SET

    def off(why: str):
        if explicit:
            raise SafekeelError(f"--monitor-prompts {spec}: {why}")
        log.warning("safety monitor off: %s (give --monitor-prompts, or --monitor-steps 0 to silence this)", why)
        return None, {"status": "off", "why": why}

    if backend and not explicit:
        return off(f"it does not run under {backend}")
    if not explicit and not _default_set_cached():
        return off(f"the default prompt set {DEFAULT_SET} is not in the cache and the monitor does not download "
                   "by itself")
    records, kept, warnings = _held_out(spec, trained_rows, "prompts", "the monitor")
    if not kept:
        return off(f"every prompt of {spec} is among this run's training rows; nothing is held out")
    warnings += _identification_overlap(kept, spec, identification_set)
    for w in warnings:
        log.warning("%s", w)
    chosen = _spread(kept, options.monitor_probe_prompts)
    # the rollback is tuned on them, so evaluations warn when they score them (docs/leakage.md)
    return chosen, {**_summary(spec, records, kept, chosen, warnings), "probe_tokens": options.monitor_probe_tokens,
                    "every_steps": options.monitor_steps, "first_positions": FIRST_POSITIONS}


def _held_out(spec: str, trained_rows: list[dict], what: str, where: str) -> tuple[list, list, list[str]]:
    """(the records of `spec`, those this run does not train on, a warning when some were dropped)."""
    from safekeel.data.prompts import load_prompts
    from safekeel.data.records import row_prompt
    from safekeel.text import normalise_text

    records = load_prompts(spec)
    trained = {normalise_text(row_prompt(r)) for r in trained_rows}
    kept = [r for r in records if normalise_text(r.prompt) not in trained]
    dropped = len(records) - len(kept)
    warning = (f"safety monitor: {dropped} of the {len(records)} {what} of {spec} are among this run's training "
               f"rows; they are left out of {where}")
    return records, kept, [warning] if dropped else []


def _spread(kept: list, n: int) -> list:
    """`n` records spread evenly over `kept` (a set's categories come in runs)."""
    n = min(n, len(kept))
    return [kept[i * len(kept) // n] for i in range(n)]


def _summary(spec: str, records: list, kept: list, chosen: list, warnings: list[str]) -> dict:
    """A probe set's record for safekeel_run.json (its digests go into `fitted_prompts`)."""
    from safekeel.text import prompt_digest

    return {"status": "on", "prompts": spec, "set_size": len(records), "held_out": len(kept),
            "probe_prompts": [r.id for r in chosen], "probe_prompt_sha256": [prompt_digest(r.prompt) for r in chosen],
            "warnings": warnings}


def resolve_benign_prompts(options, trained_rows: list[dict]) -> tuple[list | None, dict]:
    """(the over-refusal probe's benign prompts, or None when it is off; its summary for safekeel_run.json's
    `monitor.benign`). The default set is packaged (no download) and is not an over-refusal evaluation set:
    the monitor must not fit, or watch, on what `safekeel eval` scores. A prompt this run trains on is
    dropped with a warning; a set with nothing held out turns this probe off (an error when given)."""
    from safekeel.data.benign_sets import held_out_overlap

    spec = str(options.monitor_benign_prompts).strip()
    if spec.lower() == "none":
        return None, {"status": "off", "why": "--monitor-benign-prompts none"}
    explicit = spec != DEFAULT_BENIGN_SET
    records, kept, warnings = _held_out(spec, trained_rows, "benign prompts", "the over-refusal probe")
    if not kept:
        why = f"every prompt of {spec} is among this run's training rows; nothing is held out"
        if explicit:
            raise SafekeelError(f"--monitor-benign-prompts {spec}: {why}")
        log.warning("safety monitor: over-refusal probe off: %s", why)
        return None, {"status": "off", "why": why}
    chosen = _spread(kept, options.monitor_probe_prompts)
    warnings += held_out_overlap(chosen, "safety monitor's benign probe")  # watching an eval set: say so
    for w in warnings:
        log.warning("%s", w)
    return chosen, _summary(spec, records, kept, chosen, warnings)


def _identification_overlap(kept: list, spec: str, identification_set: str | None) -> list[str]:
    """Warnings when the probe prompts were used to identify the safety tokens."""
    from safekeel.data.prompts import load_prompts
    from safekeel.data.records import check_overlap

    if not identification_set:
        return []
    if identification_set == spec:
        return [(f"safety monitor: the safety tokens were identified on {spec} itself, so the monitor's prompts "
                 "are identification prompts, not held-out ones")]
    try:
        return check_overlap(kept, load_prompts(identification_set),
                             ("safety monitor", f"identification ({identification_set})"))
    except Exception as exc:  # noqa: BLE001 - a set that cannot be loaded offline must not stop training
        return [f"safety monitor: could not check overlap with {identification_set}: {str(exc).splitlines()[0]}"]


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) for the probe, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def answer(model, tokenizer, texts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to already-formatted prompts (batched, left padding; `safekeel.generation`)."""
    from safekeel.generation import generate

    return list(generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=8, progress=False,
                         warn=False))


def judge_refusals(answers: Sequence[str]) -> list[bool]:
    """The refusal-prefix (keyword) judge's verdict on each answer: True = refusal."""
    return [bool(is_refusal(a)) for a in answers]


@torch.no_grad()
def safety_mass(model, tokenizer, texts: Sequence[str], answers: Sequence[str], safety_ids: torch.Tensor, *,
                first_n: int = FIRST_POSITIONS, max_tokens: int = 32, batch_size: int = 4) -> dict | None:
    """Mean total probability on S with `answers` teacher-forced after `texts`.

    safety_ids: [K] long. For each answer position t (answers cut to `max_tokens` tokens), m_t =
    Σ_{v∈S} p(v | x, y_<t) from the [B, T, V] probabilities of `answer_probs`; returns {"first": mean m_t over
    positions t < first_n, "answer": mean m_t over every position, "n": answers used} (means pooled over
    all positions of all answers), or None when no answer has a token."""
    from safekeel.generation import context_length, fit_prompts
    from safekeel.tokens.discrepancy import answer_probs

    answer_ids = [tokenizer(a, add_special_tokens=False).input_ids[:max_tokens] for a in answers]
    keep = [i for i, a in enumerate(answer_ids) if a]
    if not keep:
        return None
    prompt_ids = [tokenizer(texts[i], add_special_tokens=False).input_ids for i in keep]
    answer_ids = [answer_ids[i] for i in keep]
    limit = context_length(model, tokenizer)
    prompt_ids, _ = fit_prompts(prompt_ids, None if limit is None else max(1, limit - max_tokens))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = torch.zeros(2, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(keep), batch_size):
        probs, valid = answer_probs(model, prompt_ids[start:start + batch_size], answer_ids[start:start + batch_size],
                                    pad)  # [B, T, V], [B, T]
        mass = probs[..., safety_ids.to(probs.device)].sum(-1).double()  # [B, T]
        first = valid & (torch.arange(valid.shape[1], device=valid.device) < first_n)  # [B, T]
        for j, where in enumerate((first, valid)):
            sums[j] += float((mass * where).sum())
            counts[j] += float(where.sum())
    means = (sums / counts.clamp_min(1)).tolist()
    return {"first": means[0], "answer": means[1], "n": len(keep)}
