"""Judge agreement: where more than one judge scored the same answer, how often they agree.

An answer is identified by (benchmark, prompt id, response text). Its verdicts come from every sample
row that carries it: the row's own `judge` / `verdict`, plus a `verdicts` mapping {judge id: verdict
or {"verdict": ...}} when a row carries several. So two evaluation directories over one model's
answers, judged by different judges, are compared answer by answer. Only `safe` / `unsafe` verdicts
count (a judge error is no verdict). Cohen's kappa and the pair counts are `safekeel.evaluation.stats`'s
(`cohen_kappa`, `agreement`), which `eval safety` also uses for its per-benchmark agreement.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from safekeel.evaluation.stats import agreement, cohen_kappa

__all__ = ["VERDICTS", "agreement_rows", "cohen_kappa", "collect_verdicts", "judges_seen"]

VERDICTS = ("safe", "unsafe")


def _row_verdicts(row: dict) -> dict[str, str]:
    out = {}
    if row.get("judge") and row.get("verdict") in VERDICTS:
        out[str(row["judge"])] = row["verdict"]
    many = row.get("verdicts")
    if isinstance(many, dict):
        for judge, v in many.items():
            v = v.get("verdict") if isinstance(v, dict) else v
            if v in VERDICTS:
                out.setdefault(str(judge), v)
    return out


def collect_verdicts(sources: Iterable[tuple[str, list[dict]]]) -> dict[tuple, dict[str, str]]:
    """{(benchmark, id, response): {judge: verdict}} from (benchmark, sample rows) pairs; the first
    verdict a judge gave an answer is kept."""
    out: dict[tuple, dict[str, str]] = {}
    for benchmark, rows in sources:
        for row in rows:
            if "response" not in row:
                continue
            key = (benchmark, str(row.get("id")), str(row["response"]))
            for judge, v in _row_verdicts(row).items():
                out.setdefault(key, {}).setdefault(judge, v)
    return out


def agreement_rows(verdicts: dict[tuple, dict[str, str]]) -> list[dict]:
    """One entry per (benchmark, judge pair) with at least one answer both judged:
    {"benchmark", "judges": (a, b), "n", "agree", "agreement", "kappa", "a_only_unsafe", "b_only_unsafe"}."""
    pairs: dict[tuple, list[tuple[str, str]]] = {}
    for (benchmark, _, _), by_judge in verdicts.items():
        for a, b in combinations(sorted(by_judge), 2):
            pairs.setdefault((benchmark, a, b), []).append((by_judge[a], by_judge[b]))
    return [{"benchmark": benchmark, "judges": (a, b), **agreement(labels)}
            for (benchmark, a, b), labels in sorted(pairs.items())]


def judges_seen(verdicts: dict[tuple, dict[str, str]]) -> list[str]:
    return sorted({j for by_judge in verdicts.values() for j in by_judge})
