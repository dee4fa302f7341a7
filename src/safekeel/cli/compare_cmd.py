"""`safekeel compare DIR…`: one table of ASR per benchmark and accuracy per task across runs.

Every results file is validated (`safekeel.evaluation.schema`) and --output checked before anything is
printed or written; a bad one is one line, exit 2.
"""

from __future__ import annotations

from safekeel.cli.flags import add_flag


def register(sub) -> None:
    p = sub.add_parser("compare", help="one table of ASR and task accuracy across result directories")
    p.add_argument("runs", nargs="+", metavar="DIR", help="result directories (or results.json files)")
    add_flag(p, "format", default="rich", choices=["rich", "markdown", "csv"], help="output format (default rich)")
    add_flag(p, "ci", action="store_true", help="show 95%% Wilson intervals")
    add_flag(p, "output", default=None, help="also write the table (markdown or csv) to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from safekeel import checks
    from safekeel.evaluation.compare import comparison_table, load_runs
    from safekeel.evaluation.report import render
    from safekeel.io_utils import atomic_write_text

    if args.output is not None:  # before reading anything: a bad --output is found in a second
        checks.output_file(args.output, "--output")
    columns, rows = comparison_table(load_runs(args.runs), ci=args.ci)
    text = render(columns, rows, args.format, title="safety and accuracy across runs")
    if text is not None:
        print(text, end="")
    if args.output:
        fmt = "csv" if args.output.endswith(".csv") else "markdown"
        atomic_write_text(args.output, text if text is not None and args.format == fmt else render(columns, rows, fmt))
        print(f"wrote {args.output}")
    return 0
