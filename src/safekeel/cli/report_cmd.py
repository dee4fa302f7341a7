"""`safekeel report DIR`: one self-contained HTML page (and a Markdown twin) about a training run, an
evaluation, a directory of them, or an experiment grid (docs/report.md)."""

from __future__ import annotations

from safekeel.cli.flags import add_flag, positive_int


def register(sub) -> None:
    p = sub.add_parser("report", help="an HTML + Markdown report of runs, evaluations or a grid",
                       description="Scan DIR (4 levels deep) for training runs (train_log.jsonl, "
                                   "safekeel_run.json), evaluations (results.json) and experiment grids "
                                   "(grid.yaml) and write one self-contained HTML page with tables, training "
                                   "curves, monitor plots, safety tokens, sample answers and judge agreement, "
                                   "plus a Markdown twin with its images in a folder next to it.")
    p.add_argument("dir", metavar="DIR", help="a run, an evaluation, a directory of them, or a grid")
    add_flag(p, "output", default=None,
             help="the HTML file to write (default DIR/report.html); the Markdown twin is the same name with "
                  ".md, its images go to NAME_files/")
    add_flag(p, "samples", type=positive_int, default=3,
             help="refusals and compliances shown per model and prompt set (default 3)")
    add_flag(p, "title", default=None, help="page title (default 'safekeel report: <DIR name>')")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from safekeel import checks
    from safekeel.errors import SafekeelError
    from safekeel.reporting import build_report, output_paths

    if not Path(args.dir).expanduser().is_dir():
        raise SafekeelError(f"{args.dir} is not a directory")
    html, md, _ = output_paths(args.dir, args.output)
    if html == md:
        raise SafekeelError(f"--output {args.output} names the HTML page; give a name ending in .html")
    checks.output_file(html, "--output")  # before the scan: a bad --output is found in a second
    checks.output_file(md, "--output (Markdown twin)")
    paths = build_report(args.dir, args.output, samples=args.samples, title=args.title)
    print(f"wrote {paths.html} and {paths.markdown} ({paths.images} image(s) in {paths.files_dir})")
    return 0
