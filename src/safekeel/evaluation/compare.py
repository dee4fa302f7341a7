"""`safekeel compare`: one table of ASR per benchmark, over-refusal and accuracy per task across result directories."""

from __future__ import annotations

from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.evaluation.probes import OVER_REFUSAL_LABELS
from safekeel.evaluation.results import load_results, results_path
from safekeel.evaluation.stats import fmt_rate


def load_runs(paths: list[str]) -> list[tuple[str, dict]]:
    """[(label, results)]: the label is the directory name (the full path when two names clash)."""
    if not paths:
        raise SafekeelError("give at least one results directory")
    runs = [(results_path(p), load_results(p)) for p in paths]
    labels = [f.parent.name or str(f.parent) for f, _ in runs]
    if len(set(labels)) < len(labels):
        labels = [str(f.parent) for f, _ in runs]
    return list(zip(labels, (d for _, d in runs)))


def _union(runs: list[tuple[str, dict]], section: str) -> list[str]:
    names: dict[str, None] = {}
    for _, data in runs:
        names.update(dict.fromkeys(data.get(section, {})))
    return list(names)


def comparison_table(runs: list[tuple[str, dict]], *, ci: bool = False) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): one row per run; ASR per benchmark, then over-refusal per probed set (next to the
    ASR it qualifies: a low ASR from a model that refuses everything is no success), then accuracy per task (with the share of answers cut off by the token budget, when any was)."""
    benchmarks, tasks = _union(runs, "benchmarks"), _union(runs, "tasks")
    probed = [(key, label) for key, label in OVER_REFUSAL_LABELS.items()
              if any((d.get("probes") or {}).get(key) for _, d in runs)]
    columns = ["run", "model", *[f"ASR {b}" for b in benchmarks], *[label for _, label in probed],
               *[f"acc {t}" for t in tasks]]
    rows = []
    for label, data in runs:
        model = data.get("model", {})
        name = Path(model.get("spec") or "?").name + (f" + {Path(model['adapter']).name}" if model.get("adapter") else "")
        row = [label, name]
        for b in benchmarks:
            e = data.get("benchmarks", {}).get(b)
            row.append(f"{fmt_rate(e['asr'], e['ci95'] if ci else None)} (n={e['n']})" if e else "-")
        for key, _ in probed:
            o = (data.get("probes") or {}).get(key)
            row.append(f"{fmt_rate(o['rate'], o['ci95'] if ci else None)} (n={o['n']})" if o else "-")
        for t in tasks:
            e = data.get("tasks", {}).get(t)
            cut = f", {fmt_rate(e['cut_off_rate'])} cut off" if e and e.get("cut_off") else ""
            row.append(f"{fmt_rate(e['accuracy'], e['ci95'] if ci else None)} (n={e['n']}{cut})" if e else "-")
        rows.append(row)
    return columns, rows
