"""`safekeel compare DIR…`: one table of ASR per benchmark and accuracy per task across runs.

Every results file (safekeel results.json or lm-eval results file) is validated
(`safekeel.evaluation.schema`) and --output checked before anything is printed or written; a bad one is
one line, exit 2. CSV (`--format csv`, or an --output ending in .csv) holds numbers, one row per run and
quantity (`safekeel.evaluation.compare.comparison_records`), the interval always included; the rich and
Markdown tables hold display strings. A benchmark judged by different judges across runs, or a task
scored by different metrics, is a warning on stderr.
"""

from __future__ import annotations

import sys

from safekeel.cli.flags import add_flag


def register(sub) -> None:
    p = sub.add_parser("compare", help="one table of ASR and task accuracy across result directories")
    p.add_argument("runs", nargs="+", metavar="DIR",
                   help="result directories, results.json files or lm-eval results_*.json files")
    add_flag(p, "format", default="rich", choices=["rich", "markdown", "csv"],
             help="output format (default rich); csv: numbers, one row per run and benchmark/set/task, with "
                  "columns value, n, judged, errors, ci_low, ci_high, judge")
    add_flag(p, "ci", action="store_true", help="show 95%% Wilson intervals (csv always has them)")
    add_flag(p, "output", default=None, help="also write the table (markdown or csv) to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from safekeel import checks
    from safekeel.evaluation.compare import (
        comparability_warnings,
        comparison_records,
        comparison_table,
        load_runs,
    )
    from safekeel.evaluation.report import render
    from safekeel.io_utils import atomic_write_text

    if args.output is not None:  # before reading anything: a bad --output is found in a second
        checks.output_file(args.output, "--output")
    runs = load_runs(args.runs)
    for w in comparability_warnings(runs):
        print(f"warning: {w}", file=sys.stderr)

    def text_of(fmt: str) -> str | None:
        if fmt == "csv":  # numbers, not "20.0% (n=100)"
            columns, rows = comparison_records(runs)
            return render(columns, [["" if v is None else v for v in r] for r in rows], "csv")
        return render(*comparison_table(runs, ci=args.ci), fmt, title="safety and accuracy across runs")

    text = text_of(args.format)
    if text is not None:
        print(text, end="")
    if args.output:
        fmt = "csv" if args.output.endswith(".csv") else "markdown"
        atomic_write_text(args.output, text if text is not None and args.format == fmt else text_of(fmt))
        print(f"wrote {args.output}")
    return 0
