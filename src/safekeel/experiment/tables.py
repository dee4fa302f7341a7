"""results.csv (one row per finished cell) and tables.md (one table per dataset and harmful ratio).

The tables have the shape of the PACT paper's Tables 2–4: one row per defence (and learning rate), the
initial model first, each metric as mean ± std over the seeds with the number of seeds shown. An ASR
never stands alone: over-refusal on the everyday and the benign-but-risky sets, task accuracy and the
task's cut-off share (answers that used the whole token budget) sit beside it.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from safekeel.io_utils import atomic_write_text

KEY_COLUMNS = ["cell", "method", "dataset", "harmful_ratio", "learning_rate", "seed"]
METRIC_COLUMNS = ["asr", "asr_ci_low", "asr_ci_high", "over_refusal_everyday", "over_refusal_risky",
                  "task_accuracy", "task_cutoff_rate", "train_s", "eval_s"]
EXTRA_COLUMNS = ["label", "defence", "benchmark", "asr_n", "over_refusal_everyday_n", "over_refusal_risky_n",
                 "task", "task_n", "task_ci_low", "task_ci_high"]
COLUMNS = KEY_COLUMNS + METRIC_COLUMNS + EXTRA_COLUMNS
TEXT_COLUMNS = {"cell", "method", "dataset", "label", "defence", "benchmark", "task"}
INITIAL = "initial"
# (column, header) of the tables, all shares shown in percent
TABLE_METRICS = [("asr", "ASR (%)"), ("over_refusal_everyday", "over-refusal everyday (%)"),
                 ("over_refusal_risky", "over-refusal risky (%)"), ("task_accuracy", "task accuracy (%)"),
                 ("task_cutoff_rate", "cut-off (%)")]


def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """results.csv: COLUMNS, then any other keys of the rows (e.g. asr_<benchmark> of further benchmarks)."""
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS + extra, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell_text(row.get(k)) for k in COLUMNS + extra})
    return atomic_write_text(path, out.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a results.csv, numbers as numbers and empty cells as None."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for key, text in row.items():
            text = (text or "").strip()
            if not text:
                parsed[key] = None
            elif key in TEXT_COLUMNS:
                parsed[key] = text
            else:
                try:
                    parsed[key] = int(text) if key == "seed" else float(text)
                except ValueError:
                    parsed[key] = text
        out.append(parsed)
    return out


def is_initial(row: dict) -> bool:
    return row.get("method") == INITIAL


def mean_std(values: list) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for fewer than 2 values, count) of the values that are not None."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt_pct(values: list) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def fmt_lr(value) -> str:
    if value is None:
        return "–"
    from safekeel.experiment.cells import fmt_lr as fmt

    return fmt(float(value))


def groups(rows: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """[((dataset, harmful_ratio, method, learning_rate), rows over seeds)] in order of first appearance;
    the initial model's rows are keyed with ratio and learning rate None."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r.get("dataset"), None, INITIAL, None) if is_initial(r) else (
            r.get("dataset"), r.get("harmful_ratio"), r.get("method"), r.get("learning_rate"))
        out.setdefault(key, []).append(r)
    return list(out.items())


def sections(rows: list[dict]) -> list[tuple[str, float | None, list[tuple[tuple, list[dict]]]]]:
    """[(dataset, harmful ratio, [group, ...])]: one table per dataset and ratio, the initial model's group
    first in each (a dataset with only the initial model gets one table with ratio None)."""
    grouped = groups(rows)
    datasets = list(dict.fromkeys(k[0] for k, _ in grouped))
    out = []
    for d in datasets:
        initial = [(k, g) for k, g in grouped if k[0] == d and k[2] == INITIAL]
        trained = [(k, g) for k, g in grouped if k[0] == d and k[2] != INITIAL]
        ratios = sorted({k[1] for k, _ in trained}, key=lambda x: (x is None, x or 0.0))
        for ratio in ratios or [None]:
            out.append((d, ratio, initial + [(k, g) for k, g in trained if k[1] == ratio]))
    return out


def further_asr_columns(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(further benchmarks, further judges) named by the `asr_<name>` columns, in order of appearance: a
    further judge's ASR (on the first benchmark) comes with its `kappa_<judge id>` column, a benchmark's not."""
    skip = {"asr_ci_low", "asr_ci_high", "asr_n"}
    names = list(dict.fromkeys(k[4:] for r in rows for k in r if k.startswith("asr_") and k not in skip))
    judges = {k[6:] for r in rows for k in r if k.startswith("kappa_")}
    return [n for n in names if n not in judges], [n for n in names if n in judges]


def table_metrics(rows: list[dict]) -> list[tuple[str, str]]:
    """(column, header) of a table: the first benchmark's ASR, each further judge's ASR of it and each
    further benchmark's right after it (every ASR stays beside the over-refusal that qualifies it), then
    over-refusal, task accuracy and cut-off."""
    first = next((r.get("benchmark") for r in rows if r.get("benchmark")), None)
    benchmarks, judges = further_asr_columns(rows)
    asr = [("asr", f"ASR {first} (%)" if first else "ASR (%)")]
    asr += [(f"asr_{j}", f"ASR {first or ''} by {j} (%)".replace("  ", " ")) for j in judges]
    asr += [(f"asr_{name}", f"ASR {name} (%)") for name in benchmarks]
    return asr + TABLE_METRICS[1:]


def _label(group: list[dict]) -> str:
    row = group[0]
    return "initial model" if is_initial(row) else str(row.get("label") or row.get("method"))


def render(rows: list[dict], meta: dict | None = None) -> str:
    """tables.md: a short header (what each column measures, when `meta` says), then the tables."""
    meta = meta or {}
    lines = [f"# {meta.get('name') or 'experiment'}" + (f": {meta['model']}" if meta.get("model") else ""), ""]
    if meta.get("notes"):
        lines += [*meta["notes"], ""]
    lines += [("Each cell: mean ± std over seeds (n = seeds with a result; no ± with one seed). ASR and "
               "over-refusal are shares of prompts; over-refusal is measured on the held-out everyday and "
               "benign-but-risky sets; cut-off is the share of task answers that used the whole token budget."), ""]
    if not rows:
        return "\n".join(lines + ["No finished cells yet.", ""])
    metrics = table_metrics(rows)
    for dataset, ratio, grouped in sections(rows):
        title = f"## {dataset}" + (f", harmful ratio {ratio:g}" if ratio is not None else "")
        lines += [title, "", "| defence | lr | n | " + " | ".join(h for _, h in metrics) + " |",
                  "|---|---|---|" + "---|" * len(metrics)]
        for key, group in grouped:
            cols = [_label(group), fmt_lr(key[3]), str(len(group))]
            cols += [fmt_pct([r.get(m) for r in group]) for m, _ in metrics]
            lines.append("| " + " | ".join(cols) + " |")
        lines.append("")
    return "\n".join(lines)


def write_tables(path: str | Path, rows: list[dict], meta: dict | None = None) -> Path:
    return atomic_write_text(path, render(rows, meta))
