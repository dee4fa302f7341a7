"""Rich tables on stdout for `eval safety`, `eval task` and `compare`, plus Markdown/CSV renderings."""

from __future__ import annotations

import csv
import io

from safekeel.evaluation.stats import fmt_rate


def _console():
    from rich.console import Console

    return Console()


def print_safety(results: dict, names: list[str] | None = None) -> None:
    from rich.table import Table

    benchmarks = results.get("benchmarks", {})
    names = [n for n in (names or list(benchmarks)) if n in benchmarks]
    model = results.get("model", {})
    title = f"safety of {model.get('spec') or 'model'}" + (f" + {model['adapter']}" if model.get("adapter") else "")
    table = Table(title=f"{title} (judge: {results.get('judge', {}).get('id', '?')})")
    for col in ("benchmark", "n", "judged", "errors", "ASR [95% CI]", "refusal rate"):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for name in names:
        b = benchmarks[name]
        table.add_row(name, str(b["n"]), str(b["judged"]), str(b["errors"]), fmt_rate(b["asr"], b["ci95"]),
                      fmt_rate(b["refusal_rate"]))
    _console().print(table)
    if any(benchmarks[name].get("judges") for name in names):
        print_other_judges(results, names)
    probes = results.get("probes")
    if probes and names and probes.get("benchmark") in names:
        print_probes(probes)


def print_other_judges(results: dict, names: list[str]) -> None:
    """The further judges of a multi-judge evaluation: their ASR and their agreement with the primary."""
    from rich.table import Table

    benchmarks = results.get("benchmarks", {})
    primary = results.get("judge", {}).get("id", "?")
    table = Table(title=f"further judges: their ASR, and their agreement and Cohen's kappa with {primary} over "
                        "the answers both judged (n both)")
    for col in ("benchmark", "judge", "judged", "errors", "ASR [95% CI]", "n both", "agree", "kappa"):
        table.add_column(col, justify="left" if col in ("benchmark", "judge") else "right",
                         overflow="fold" if col in ("benchmark", "judge") else "ellipsis")
    for name in names:
        for jid, j in (benchmarks[name].get("judges") or {}).items():
            a = j.get("agreement") or {}
            kappa = a.get("kappa")
            table.add_row(name, jid, str(j.get("judged")), str(j.get("errors")), fmt_rate(j.get("asr"), j.get("ci95")),
                          str(a.get("n")), fmt_rate(a.get("agreement")), "n/a" if kappa is None else f"{kappa:.2f}")
    _console().print(table)


def print_probes(probes: dict) -> None:
    from rich.table import Table

    table = Table(title="over-refusal and drift probes")
    table.add_column("probe")
    table.add_column("model", justify="right")
    table.add_column("base / reference", justify="right")
    for key, what in (("over_refusal_everyday", "everyday"), ("over_refusal", "benign-risky")):
        if key in probes:
            o = probes[key]
            table.add_row(f"over-refusal {what} (n={o['n']})", fmt_rate(o["rate"], o["ci95"]),
                          fmt_rate(o["base"]["rate"]) if o.get("base") else "-")
    if "roleplay" in probes:
        r = probes["roleplay"]
        table.add_row(f"role-play ASR (n={r['n']}) vs plain", fmt_rate(r["asr"], r["ci95"]), fmt_rate(r["plain_asr"]))
    if "identity" in probes:
        i = probes["identity"]
        ents = ", ".join(f"{k}×{v}" for k, v in sorted(i["entities"].items())) or "none"
        base_ents = ", ".join(f"{k}×{v}" for k, v in sorted(i.get("base_entities", {}).items())) or "none"
        table.add_row(f"identity: names mentioned (n={i['n']})", ents, base_ents if "base_entities" in i else "-")
        if i.get("mean_similarity") is not None:
            table.add_row("identity: answers naming others / similarity", f"{i['changed']} of {i['n']}",
                          f"{i['mean_similarity']:.2f}")
    if "structure" in probes:
        s, base = probes["structure"], probes["structure"].get("base")
        table.add_row("answer length (mean words)", f"{s['model'].get('mean_words', 0):.1f}",
                      f"{base['mean_words']:.1f}" if base else "-")
        table.add_row("answers with lists", fmt_rate(s["model"].get("list_share")),
                      fmt_rate(base["list_share"]) if base else "-")
    _console().print(table)


def print_tasks(results: dict, names: list[str] | None = None) -> None:
    from rich.table import Table

    tasks = results.get("tasks", {})
    table = Table(title=f"task accuracy of {results.get('model', {}).get('spec') or 'model'}")
    for col in ("task", "n", "correct", "accuracy [95% CI]", "no answer found", "cut off"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name in names or list(tasks):
        t = tasks[name]
        cut = fmt_rate(t["cut_off_rate"]) if t.get("cut_off_rate") is not None else "?"
        table.add_row(name, str(t["n"]), str(t["correct"]), fmt_rate(t["accuracy"], t["ci95"]),
                      str(t["extraction_failures"]), cut)
    _console().print(table)


def render(columns: list[str], rows: list[list[str]], fmt: str = "rich", title: str = "") -> str | None:
    """Print a rich table (returns None) or return Markdown / CSV text."""
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        return buf.getvalue()
    from rich.table import Table

    table = Table(title=title or None)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    _console().print(table)
    return None
