"""`safekeel experiment GRID.yaml`: defences × datasets × harmful ratios × learning rates × seeds on one
model; each cell is train + eval safety + eval task, run in order, finished cells skipped
(`safekeel.experiment`; docs/experiments.md). Exit 0 when every selected cell finished, 1 when one failed,
2 for a bad grid file or arguments (checked for every cell before the first one runs)."""

from __future__ import annotations

import argparse

from safekeel.cli.flags import add_flag

_EPILOG = """examples:
  safekeel experiment experiments/grid_example.yaml --dry-run      # the cells, and which are done
  safekeel experiment experiments/grid_example.yaml                # run (resumes; finished cells skipped)
  safekeel experiment grid.yaml --only 'pact*' --only 'sft__*'     # a subset (glob on cell ids)
  safekeel experiment runs/grid --tables-only                      # re-render from the cell.json files
"""


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a grid of train + eval cells and tabulate it (resumable)",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", metavar="GRID", help="grid YAML file, or a grid directory (its grid.yaml)")
    add_flag(p, "output-dir", default=None, help="grid directory (default: the file's output_dir)")
    add_flag(p, "dry-run", action="store_true", help="list the cells and their state (done, todo, changed...); run nothing")
    add_flag(p, "only", action="append", default=None, metavar="PATTERN",
             help="run only cells whose id matches this glob (repeatable, or comma-separated)")
    add_flag(p, "tables-only", action="store_true",
             help="only write results.csv, tables.md and pareto.png from the cell.json files (merging runs)")
    add_flag(p, "rerun-changed", action="store_true",
             help="rerun cells whose cell.json was made with other settings (a finished training run is kept "
                  "when only the evaluation changed); without it such cells stop the grid")
    add_flag(p, "keep-going", action="store_true", help="go on with the next cell after a failed one")
    add_flag(p, "in-process", action="store_true",
             help="run cells in this process instead of one subprocess each (debugging; GPU memory is not "
                  "returned between cells as reliably)")
    p.set_defaults(func=run)


def run(args) -> int:
    from safekeel.experiment.grid import load_grid
    from safekeel.experiment.runner import in_process, run_grid

    if args.dry_run and args.tables_only:
        from safekeel.errors import SafekeelError

        raise SafekeelError("--dry-run and --tables-only are exclusive")
    grid = load_grid(args.grid, args.output_dir)
    only = [p.strip() for item in args.only or [] for p in item.split(",") if p.strip()] or None
    report = run_grid(grid, runner=in_process if args.in_process else None, only=only, dry_run=args.dry_run,
                      tables_only=args.tables_only, rerun_changed=args.rerun_changed, keep_going=args.keep_going,
                      echo=lambda line: print(line, flush=True))
    for cid, msg in report.failed:
        print(f"failed: {cid}: {msg}")
    return 1 if report.failed else 0
