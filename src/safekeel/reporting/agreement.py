"""Judge agreement: where more than one judge scored the same answer, how often they agree.

An answer is identified by (benchmark, prompt id, response text). Its verdicts come from every sample
row that carries it: the row's own `judge` / `verdict`, plus a `verdicts` mapping {judge id: verdict
or {"verdict": ...}} when a row carries several. So two evaluation directories over one model's
answers, judged by different judges, are compared answer by answer. Only `safe` / `unsafe` verdicts
count (a judge error is no verdict). Cohen's kappa and the pair counts are `safekeel.evaluation.stats`'s
(`cohen_kappa`, `agreement`), which `eval safety` also uses for its per-benchmark agreement.

Where an evaluation's answers are not on disk (a committed grid leaves its `samples_*.jsonl` out: they
hold answers to harmful prompts), `recorded_pairs` rebuilds that evaluation's verdict pairs from the
counts `eval safety` wrote into results.json (`benchmarks.<b>.judges.<j>.agreement`), so the pooled table
still covers it; those answers are counted once per evaluation, not deduplicated across evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from safekeel.evaluation.stats import agreement, cohen_kappa

__all__ = ["VERDICTS", "agreement_rows", "cohen_kappa", "collect_verdicts", "judges_seen", "recorded_pairs"]

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


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def recorded_pairs(benchmark: str, entry: dict, primary: str) -> dict[tuple, list[tuple[str, str]]]:
    """{(benchmark, judge a, judge b): [(a's verdict, b's verdict), ...]} rebuilt from one results.json
    benchmark entry (`primary` judged it; each of `entry["judges"]` carries its `agreement` with it).

    The 2x2 table needs the answers both called unsafe: the primary's `unsafe` count less the ones only
    it called unsafe, exact when every answer the primary judged was judged by both (`agreement.n` equals
    the primary's `judged`), or the same from the other judge's side. A pair where neither holds (judge
    errors on both sides) is left out rather than guessed."""
    out: dict[tuple, list[tuple[str, str]]] = {}
    for judge, record in (entry.get("judges") or {}).items():
        agr = record.get("agreement") if isinstance(record, dict) else None
        if not isinstance(agr, dict) or agr.get("with", primary) != primary or judge == primary:
            continue
        n, agree = _count(agr.get("n")), _count(agr.get("agree"))
        p_only, j_only = _count(agr.get("primary_only_unsafe")), _count(agr.get("judge_only_unsafe"))
        if None in (n, agree, p_only, j_only) or agree + p_only + j_only != n:
            continue
        if n == _count(entry.get("judged")) and _count(entry.get("unsafe")) is not None:
            both_unsafe = entry["unsafe"] - p_only
        elif n == _count(record.get("judged")) and _count(record.get("unsafe")) is not None:
            both_unsafe = record["unsafe"] - j_only
        else:
            continue
        if not 0 <= both_unsafe <= agree:
            continue
        pairs = ([("unsafe", "unsafe")] * both_unsafe + [("safe", "safe")] * (agree - both_unsafe)
                 + [("unsafe", "safe")] * p_only + [("safe", "unsafe")] * j_only)
        a, b = sorted((primary, str(judge)))
        out[(benchmark, a, b)] = pairs if a == primary else [(y, x) for x, y in pairs]
    return out


def agreement_rows(verdicts: dict[tuple, dict[str, str]],
                   recorded: dict[tuple, list[tuple[str, str]]] | None = None) -> list[dict]:
    """One entry per (benchmark, judge pair) with at least one answer both judged:
    {"benchmark", "judges": (a, b), "n", "agree", "agreement", "kappa", "a_only_unsafe", "b_only_unsafe",
    "recorded" (how many of the n came from results.json counts, not from answers)}. `recorded` adds
    verdict pairs keyed like `recorded_pairs`'s."""
    pairs: dict[tuple, list[tuple[str, str]]] = {}
    for (benchmark, _, _), by_judge in verdicts.items():
        for a, b in combinations(sorted(by_judge), 2):
            pairs.setdefault((benchmark, a, b), []).append((by_judge[a], by_judge[b]))
    from_counts = {key: len(value) for key, value in (recorded or {}).items()}
    for key, value in (recorded or {}).items():
        pairs.setdefault(key, []).extend(value)
    return [{"benchmark": benchmark, "judges": (a, b), **agreement(labels),
             "recorded": from_counts.get((benchmark, a, b), 0)}
            for (benchmark, a, b), labels in sorted(pairs.items())]


def judges_seen(verdicts: dict[tuple, dict[str, str]]) -> list[str]:
    return sorted({j for by_judge in verdicts.values() for j in by_judge})
