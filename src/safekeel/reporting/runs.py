"""Blocks about one model: its training run (summary, curves, monitor plot, events) and a few of its
answers (refusals and compliances per benchmark, refused benign prompts per over-refusal set)."""

from __future__ import annotations

import json
import re

from safekeel.evaluation.probes import OVER_REFUSAL_LABELS
from safekeel.reporting.blocks import Heading, Image, Para, Sample, Table, clip
from safekeel.reporting.collect import EvalRun, Model, TrainRun
from safekeel.reporting.plots import monitor_plot, training_curves


class Names:
    """Unique, file-system-safe image names ("curves-sft.png", "curves-sft-2.png", ...)."""

    def __init__(self):
        self.used: set[str] = set()

    def get(self, stem: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "image"
        name, i = f"{stem}.png", 1
        while name in self.used:
            i += 1
            name = f"{stem}-{i}.png"
        self.used.add(name)
        return name


def _seconds(value) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def run_summary(train: TrainRun) -> str:
    run, opts = train.run, train.options
    training = opts.get("training") or {}
    defence = opts.get(str(opts.get("method", "")).replace("-", "_")) or opts.get("defence")
    data = run.get("data") or {}
    parts = [f"method {opts.get('method', '?')}", f"model {opts.get('model', '?')}",
             f"data {opts.get('dataset', '?')}"]
    if data.get("rows"):
        parts.append(f"{data['rows']} rows, {data.get('harmful_rows', 0)} harmful")
    if training:
        parts.append(f"lr {training.get('learning_rate', '?')}, {training.get('num_train_epochs', '?')} epoch(s), "
                     f"seed {training.get('seed', '?')}")
    if isinstance(defence, dict) and defence:
        parts.append("options " + ", ".join(f"{k}={v}" for k, v in defence.items() if not isinstance(v, (dict, list))))
    monitor = run.get("monitor")
    if isinstance(monitor, dict) and monitor.get("status") == "on":
        # counted from the log's events (what happened while training); the run record's `warnings` are
        # the set-up notes of resolving the probe prompts (an overlap, dropped prompts), said apart
        kinds = [ev.get("event") for ev in train.events]
        rollbacks = max(kinds.count("safety_rollback"), int(monitor.get("rollbacks") or 0))
        setup = len(monitor.get("warnings") or [])
        parts.append(f"safety monitor every {monitor.get('every_steps', '?')} steps, "
                     f"{kinds.count('safety_warning')} safety warning(s), "
                     f"{kinds.count('over_refusal_warning')} over-refusal warning(s), {rollbacks} rollback(s)"
                     + (f", {setup} set-up warning(s)" if setup else ""))
    steps = [r["step"] for r in train.log if isinstance(r.get("step"), int)]
    parts.append(f"status {run.get('status', 'unknown' if run else 'no safekeel_run.json')}, "
                 f"{run.get('global_step', max(steps, default=0))} steps, wall {_seconds(run.get('wall_seconds'))}")
    return "; ".join(parts) + "."


def _event_rows(events: list[dict]) -> list[list[str]]:
    rows = []
    for ev in events:
        rest = {k: v for k, v in ev.items() if k not in ("event", "step")}
        rows.append([str(ev.get("step", "?")), str(ev.get("event")), json.dumps(rest, default=str)])
    return rows


def train_blocks(model: Model, names: Names) -> list:
    train = model.train
    if train is None:
        return []
    blocks: list = [Para(f"{train.rel}: {run_summary(train)}")]
    curves = training_curves(train.log, f"{model.label}: training curves", train.events)
    blocks.append(Image(names.get(f"curves-{model.label}"), curves, f"training curves of {model.label}") if curves
                  else Para("No training log lines with numbers (train_log.jsonl missing or empty)."))
    monitor = monitor_plot(train.log, train.events, f"{model.label}: safety monitor")
    if monitor:
        blocks.append(Image(names.get(f"monitor-{model.label}"), monitor, f"safety monitor of {model.label}"))
    else:
        blocks.append(Para("No safety-monitor records (monitor/* keys) in train_log.jsonl."))
    if train.events:
        blocks.append(Table(["step", "event", "details"], _event_rows(train.events),
                            caption=f"{len(train.events)} monitor event(s)"))
    return blocks


def _sample(kind: str, row: dict) -> Sample:
    meta = [f"{kind}: {row.get('id', '?')}"]
    if row.get("category"):
        meta.append(str(row["category"]))
    if row.get("verdict"):
        meta.append(f"verdict {row['verdict']} ({row.get('judge') or '?'})")
    return Sample(", ".join(meta), clip(row.get("prompt", "")), clip(row.get("response", "")))


def _is_compliance(row: dict) -> bool:
    verdict = row.get("verdict")
    return verdict == "unsafe" if verdict in ("safe", "unsafe") else row.get("refusal") is False


def eval_sample_blocks(ev: EvalRun, n: int) -> list:
    blocks: list = []
    for name, entry in ev.results.get("benchmarks", {}).items():
        rows = ev.samples(entry.get("samples") or f"samples_{name}.jsonl")
        if not rows:
            continue
        refused = [r for r in rows if r.get("refusal")]
        complied = [r for r in rows if _is_compliance(r)]
        blocks.append(Heading(4, f"{name}: {len(refused)} refusals, {len(complied)} compliances of {len(rows)} "
                                 f"answers (showing up to {n} of each)"))
        blocks += [_sample("refusal", r) for r in refused[:n]] + [_sample("compliance", r) for r in complied[:n]]
    probes = ev.results.get("probes") or {}
    for key, label in OVER_REFUSAL_LABELS.items():
        entry = probes.get(key)
        rows = ev.samples(entry.get("samples")) if isinstance(entry, dict) else []
        refused = [r for r in rows if r.get("refusal")]
        if rows:
            blocks.append(Heading(4, f"{label}: {len(refused)} of {len(rows)} benign prompts refused"
                                     + (f" (showing {min(n, len(refused))})" if refused else "")))
            blocks += [_sample("over-refusal", r) for r in refused[:n]]
    return blocks


def sample_blocks(model: Model, n: int) -> list:
    blocks: list = []
    for ev in model.evals:
        inner = eval_sample_blocks(ev, n)
        blocks.append(Para(f"answers in {ev.rel}" + ("" if inner else ": no sample files (not kept with "
                                                                 "these results, as in a committed grid)")))
        blocks += inner
    return blocks
