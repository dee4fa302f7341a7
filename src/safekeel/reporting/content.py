"""The report's content as blocks: header, grids, the models table, judge agreement, training curves and
monitor plots, safety tokens, sample answers.

Project rule (docs/design.md, "Evaluation rules"): an ASR is never shown alone. The models table is the
only place the report prints one, and every row carries the same model's over-refusal on the packaged
`everyday` and `benign-risky` sets and its task accuracy with the share of answers cut off, or says
"not measured".
"""

from __future__ import annotations

from safekeel import __version__
from safekeel.evaluation.probes import OVER_REFUSAL_LABELS
from safekeel.evaluation.stats import fmt_rate
from safekeel.reporting.agreement import agreement_rows, collect_verdicts, judges_seen, recorded_pairs
from safekeel.reporting.blocks import Bullets, Details, Heading, Image, Markdown, Para, Pre, Table
from safekeel.reporting.collect import EvalRun, Grid, Model, Scan
from safekeel.reporting.plots import overview_curves
from safekeel.reporting.runs import Names, sample_blocks, train_blocks

NOT_MEASURED = "not measured"


def _rate_cell(rate, ci, n) -> str:
    return f"{fmt_rate(rate, ci)} n={n}" if n is not None else fmt_rate(rate, ci)


def _primary_judge(results: dict, entry: dict) -> str:
    """The judge whose verdicts a benchmark entry's ASR counts: its own `judge`, else the evaluation's."""
    return str(entry.get("judge") or (results.get("judge") or {}).get("id") or "?")


def _judge(ev: EvalRun) -> str:
    names = {_primary_judge(ev.results, b) for b in ev.results.get("benchmarks", {}).values()}
    return ", ".join(sorted(names)) or "-"


def _cut_off(entry: dict) -> str:
    """Answers the token budget stopped (`cut_off` of the `cut_off_known` rows that say), with the accuracy
    over the finished ones; results written before answers recorded it say "not recorded". Prompts cut
    to fit the context (`truncated`) are added when there were any."""
    cut, known = entry.get("cut_off"), entry.get("cut_off_known", entry.get("n"))
    if isinstance(cut, int) and not isinstance(cut, bool) and known:
        text = f"{cut}/{known} ({fmt_rate(cut / known)})"
        if cut and entry.get("accuracy_finished") is not None:
            text += f", finished: {fmt_rate(entry['accuracy_finished'])} correct"
    else:
        text = "not recorded"
    prompts = entry.get("truncated")
    if isinstance(prompts, int) and not isinstance(prompts, bool) and prompts:
        text += f"; {prompts} prompt(s) truncated"
    return text


def models_table(models: list[Model]) -> Table:
    """One row per evaluation: ASR per benchmark with its interval, over-refusal on both packaged sets,
    accuracy and cut-off share per task."""
    evals = [(m, e) for m in models for e in m.evals]
    benchmarks = list(dict.fromkeys(b for _, e in evals for b in e.results.get("benchmarks", {})))
    tasks = list(dict.fromkeys(t for _, e in evals for t in e.results.get("tasks", {})))
    columns = ["model", "results", "judge", *[f"ASR {b} [95% CI]" for b in benchmarks],
               *[f"{label} [95% CI]" for label in OVER_REFUSAL_LABELS.values()],
               *[c for t in tasks for c in (f"{t} accuracy [95% CI]", f"{t} cut off")]]
    rows = []
    for model, ev in evals:
        res = ev.results
        row = [model.label, ev.path.name if model.cell is not None else ev.rel, _judge(ev)]  # a cell's: eval
        for b in benchmarks:
            e = res.get("benchmarks", {}).get(b)
            row.append(_rate_cell(e.get("asr"), e.get("ci95"), e.get("n")) if e else NOT_MEASURED)
        for key in OVER_REFUSAL_LABELS:
            o = (res.get("probes") or {}).get(key)
            row.append(_rate_cell(o.get("rate"), o.get("ci95"), o.get("n")) if isinstance(o, dict) else NOT_MEASURED)
        for t in tasks:
            e = res.get("tasks", {}).get(t)
            row += [_rate_cell(e.get("accuracy"), e.get("ci95"), e.get("n")), _cut_off(e)] if e else \
                [NOT_MEASURED, "-"]
        rows.append(row)
    return Table(columns, rows)


def header_blocks(scan: Scan, title: str) -> list:
    trains, evals = scan.train_runs(), scan.eval_runs()
    what = (f"{len(trains)} training run(s), {len(evals)} evaluation(s)"
            + (f", {len(scan.grids)} grid(s)" if scan.grids else ""))
    blocks = [Heading(1, title),
              Para(f"Scanned {scan.root.resolve()} (up to 4 levels deep) on {scan.scanned_at} with safekeel "
                   f"{__version__}: {what}.")]
    found = [f"training run: {t.rel}" for t in trains] + [f"evaluation: {e.rel}" for e in evals] + \
        [f"grid: {g.rel}" for g in scan.grids]
    blocks.append(Details("directories found", [Bullets(found)]))
    if scan.problems:
        blocks.append(Details(f"{len(scan.problems)} file(s) could not be read", [Bullets(scan.problems)]))
    return blocks


def models_blocks(models: list[Model]) -> list:
    if not any(m.evals for m in models):
        return [Heading(2, "Models"), Para("No evaluation results (results.json) were found.")]
    return [Heading(2, "Models: safety, over-refusal and task accuracy"),
            Para("ASR = share of harmful prompts answered unsafely (lower is safer), shown next to the same "
                 "model's over-refusal on the packaged everyday and benign-but-risky sets (lower is more "
                 "helpful) and its task accuracy with the share of answers the token budget cut off; 95% "
                 "Wilson intervals in brackets. A low ASR from a model that refuses everything is no success."),
            models_table(models)]


def agreement_blocks(evals: list[EvalRun]) -> list:
    sources, recorded = [], {}
    for ev in evals:
        for name, entry in ev.results.get("benchmarks", {}).items():
            rows = ev.samples(entry.get("samples") or f"samples_{name}.jsonl")
            if rows:
                sources.append((name, rows))
                continue
            # answers not on disk (a committed grid leaves them out): the counts results.json recorded
            for key, pairs in recorded_pairs(name, entry, _primary_judge(ev.results, entry)).items():
                recorded.setdefault(key, []).extend(pairs)
    verdicts = collect_verdicts(sources)
    rows = agreement_rows(verdicts, recorded)
    blocks: list = [Heading(2, "Judge agreement")]
    if not rows:
        judges = judges_seen(verdicts)
        return blocks + [Para(f"Every answer was scored by one judge only ({', '.join(judges)}); nothing to compare."
                              if judges else "No judged answers (samples with a verdict) were found.")]
    table = Table(["benchmark", "judge A", "judge B", "answers both judged", "agreement", "Cohen's kappa",
                   "unsafe by A only", "unsafe by B only"],
                  [[r["benchmark"], r["judges"][0], r["judges"][1], str(r["n"]), fmt_rate(r["agreement"]),
                    "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}", str(r["a_only_unsafe"]),
                    str(r["b_only_unsafe"])] for r in rows])
    text = ("Answers (same benchmark, prompt id and response) scored by more than one judge. "
            "Kappa corrects the agreement for chance (1 = perfect, 0 = chance level).")
    if any(r["recorded"] for r in rows):
        text += (" Where an evaluation's answers are not on disk (a committed grid leaves them out), its "
                 "counts come from its results.json, one per evaluation: "
                 + "; ".join(f"{r['benchmark']}: {r['recorded']} of {r['n']}" for r in rows if r["recorded"])
                 + ".")
    return blocks + [Para(text), table]


def tokens_blocks(models: list[Model]) -> list:
    lists: dict[tuple, tuple[list, list[str]]] = {}
    for m in models:
        tokens = (m.train.run.get("tokens") if m.train else None) or {}
        ids, strings = tokens.get("ids") or [], tokens.get("tokens") or []
        if ids or strings:
            lists.setdefault((tuple(ids), tuple(strings)), (tokens, []))[1].append(m.label)
    blocks: list = [Heading(2, "Safety tokens")]
    if not lists:
        return blocks + [Para("No training run recorded a safety-token list (safekeel_run.json `tokens`).")]
    for (ids, strings), (tokens, users) in lists.items():
        shown = [repr(s) for s in strings] or [str(i) for i in ids]
        blocks.append(Para(f"{len(shown)} tokens (preset {tokens.get('preset', '?')}, from "
                           f"{tokens.get('path') or '?'}), used by {', '.join(users)}:"))
        blocks.append(Pre("  ".join(shown)))
        rows = [[str(i + 1), repr(strings[i]) if i < len(strings) else "?", str(ids[i]) if i < len(ids) else "?"]
                for i in range(max(len(ids), len(strings)))]
        blocks.append(Details("token ids", [Table(["rank", "token", "id"], rows)]))
    return blocks


def cell_facts(record: dict) -> str:
    """'method=pact, dataset=arith, harmful_ratio=0.5, learning_rate=0.0002, seed=0, status=done' from a
    cell.json (its `settings`, as `safekeel experiment` writes it, or top-level keys)."""
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else record
    facts = {k: settings.get(k, record.get(k)) for k in ("method", "dataset", "harmful_ratio", "learning_rate", "seed")}
    facts.update(status=record.get("status"), error=record.get("error"))
    return ", ".join(f"{k}={v}" for k, v in facts.items() if isinstance(v, (str, int, float)) and v != "")


def grid_blocks(grid: Grid, names: Names, samples: int) -> list:
    blocks: list = [Heading(2, f"Grid {grid.rel}"),
                    Para(f"{len(grid.cells)} cell(s) in {grid.path.resolve()}, "
                         f"{sum(bool(c.evals) for c in grid.cells)} with evaluation results.")]
    if grid.spec_text:
        blocks.append(Details("grid.yaml", [Pre(grid.spec_text)]))
    if grid.tables_md:
        blocks.append(Markdown(grid.tables_md))
    elif grid.results_csv:
        columns = list(grid.results_csv[0])
        blocks.append(Table(columns, [[str(r.get(c, "")) for c in columns] for r in grid.results_csv],
                            caption="results.csv"))
    if grid.pareto_png:
        blocks.append(Image(names.get(f"pareto-{grid.rel}"), grid.pareto_png, f"Pareto plot of grid {grid.rel}"))
    overview = overview_curves([(c.label, c.train.log) for c in grid.cells if c.train])
    if overview:
        blocks.append(Image(names.get(f"overview-{grid.rel}"), overview, f"training curves of the cells of {grid.rel}"))
    if grid.cells:
        blocks.append(Heading(3, "Cells"))
    for cell in grid.cells:
        facts = cell_facts(cell.cell or {})
        inner = train_blocks(cell, names) + sample_blocks(cell, samples)
        blocks.append(Details(f"cell {cell.label}" + (f" ({facts})" if facts else ""), inner or [Para("no training or evaluation output")]))
    return blocks


def build(scan: Scan, samples: int = 3, title: str | None = None) -> list:
    """All blocks of the report of `scan`; `samples` refusals and compliances shown per model and set."""
    names = Names()
    title = title or f"safekeel report: {scan.root.resolve().name}"
    blocks = header_blocks(scan, title)
    for grid in scan.grids:
        blocks += grid_blocks(grid, names, samples)
    blocks += models_blocks(scan.all_models())
    blocks += agreement_blocks(scan.eval_runs())
    trained = [m for m in scan.models if m.train]
    if trained:
        blocks.append(Heading(2, "Training"))
        overview = overview_curves([(m.label, m.train.log) for m in trained])
        if overview:
            blocks.append(Image(names.get("overview-curves"), overview, "training curves of all runs"))
        for m in trained:
            blocks.append(Details(f"{m.label}: training curves", train_blocks(m, names), open=len(trained) == 1))
    blocks += tokens_blocks(scan.all_models())
    evaluated = [m for m in scan.models if m.evals]
    if evaluated:
        blocks.append(Heading(2, "Sample answers"))
        blocks.append(Para(f"Up to {samples} refusals and {samples} compliances per model and prompt set, "
                           "in file order; over-refusals are refused benign prompts."))
        for m in evaluated:
            blocks.append(Details(f"{m.label}: sample answers", sample_blocks(m, samples)))
    return blocks
