"""`safekeel compare`: one table of ASR per benchmark, over-refusal and accuracy per task across result
directories (safekeel results.json or lm-eval results files).

`comparison_table` gives display strings ("20.0% (n=100)") for the rich and Markdown tables;
`comparison_records` gives the numbers, one row per run and measured quantity (`RECORD_COLUMNS`), for
CSV. `comparability_warnings` names what makes a column's numbers incomparable across runs: another
judge (e.g. `keyword` vs `keyword:gcg`) or another task metric.
"""

from __future__ import annotations

from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.evaluation.lm_eval_layout import TWIN_DIR
from safekeel.evaluation.probes import OVER_REFUSAL_LABELS
from safekeel.evaluation.results import load_results, resolve_results_file
from safekeel.evaluation.stats import fmt_rate

RECORD_COLUMNS = ["run", "model", "kind", "name", "metric", "value", "n", "judged", "errors", "ci_low", "ci_high",
                  "judge"]


def _folder(file: Path) -> Path:
    """The folder that names a run: the file's, or its parent's for an lm-eval twin (DIR/lm_eval/...)."""
    return file.parent.parent if file.parent.name == TWIN_DIR else file.parent


def load_runs(paths: list[str]) -> list[tuple[str, dict]]:
    """[(label, results)]: the label is the directory name (the full path when two names clash)."""
    if not paths:
        raise SafekeelError("give at least one results directory")
    runs = [(_folder(resolve_results_file(p)), load_results(p)) for p in paths]
    labels = [f.name or str(f) for f, _ in runs]
    if len(set(labels)) < len(labels):
        labels = [str(f) for f, _ in runs]
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
        row = [label, _model_name(data)]
        for b in benchmarks:
            e = data.get("benchmarks", {}).get(b)
            row.append(f"{fmt_rate(e['asr'], e['ci95'] if ci else None)} (n={e['n']})" if e else "-")
        for key, _ in probed:
            o = (data.get("probes") or {}).get(key)
            row.append(f"{fmt_rate(o['rate'], o['ci95'] if ci else None)} (n={o['n']})" if o else "-")
        for t in tasks:
            e = data.get("tasks", {}).get(t)
            cut = f", {fmt_rate(e['cut_off_rate'])} cut off" if e and e.get("cut_off") else ""
            metric = f", {e['metric']}" if e and e.get("metric") not in (None, "acc,none") else ""
            n = "?" if e and e.get("n") is None else e["n"] if e else ""
            row.append(f"{fmt_rate(e['accuracy'], e['ci95'] if ci else None)} (n={n}{cut}{metric})" if e else "-")
        rows.append(row)
    return columns, rows


def _model_name(data: dict) -> str:
    model = data.get("model") or {}
    return Path(model.get("spec") or "?").name + (f" + {Path(model['adapter']).name}" if model.get("adapter") else "")


def comparison_records(runs: list[tuple[str, dict]]) -> tuple[list[str], list[list]]:
    """(RECORD_COLUMNS, rows) with numbers, not display strings: one row per run and benchmark (metric
    `asr`), over-refusal set (`refusal_rate`) and task (`accuracy`, or the lm-eval metric it came from);
    rates as fractions in [0, 1], the 95% interval's ends in their own columns, None where unknown (an
    empty CSV cell)."""
    rows = []
    for label, data in runs:
        model = _model_name(data)
        for name, e in (data.get("benchmarks") or {}).items():
            ci = e.get("ci95") or [None, None]
            rows.append([label, model, "benchmark", name, "asr", e.get("asr"), e.get("n"), e.get("judged"),
                         e.get("errors"), ci[0], ci[1], e.get("judge")])
        for key in OVER_REFUSAL_LABELS:
            e = (data.get("probes") or {}).get(key)
            if e:
                ci = e.get("ci95") or [None, None]
                rows.append([label, model, "over_refusal", key, "refusal_rate", e.get("rate"), e.get("n"), None, None,
                             ci[0], ci[1], e.get("detector")])
        for name, e in (data.get("tasks") or {}).items():
            ci = e.get("ci95") or [None, None]
            rows.append([label, model, "task", name, e.get("metric") or "accuracy", e.get("accuracy"), e.get("n"),
                         None, None, ci[0], ci[1], None])
    return list(RECORD_COLUMNS), rows


def comparability_warnings(runs: list[tuple[str, dict]]) -> list[str]:
    """One line per benchmark judged by different judges across runs, per task scored by different
    metrics, and per note left by reading an lm-eval file."""
    out = [f"{label}: {w}" for label, data in runs for w in data.get("warnings") or []]
    for section, field, what in (("benchmarks", "judge", "judged by"), ("tasks", "metric", "scored as")):
        seen: dict[str, dict[str, list[str]]] = {}
        for label, data in runs:
            for name, e in (data.get(section) or {}).items():
                value = str(e.get(field) or ("?" if section == "benchmarks" else "accuracy (safekeel)"))
                seen.setdefault(name, {}).setdefault(value, []).append(label)
        for name, by in seen.items():
            if len(by) > 1:
                parts = "; ".join(f"{v} ({', '.join(labels)})" for v, labels in by.items())
                out.append(f"{name}: {what} {parts}; these numbers are not comparable")
    return out
