"""Running a grid: check every cell before the first runs, skip finished ones, run the rest in order,
then write results.csv, tables.md and pareto.png from the cell.json files.

Layout (`safekeel report DIR` reads it)::

    GRID_DIR/grid.yaml                 the normalised grid that was run
    GRID_DIR/cells/<id>/cell.json      settings, fingerprints, status, metrics, wall times (small: commit it)
    GRID_DIR/cells/<id>/train/         the `safekeel train` output
    GRID_DIR/cells/<id>/eval/          `eval safety` + `eval task` (results.json, samples_*.jsonl)
    GRID_DIR/results.csv, tables.md, pareto.png

A cell is skipped when its cell.json says done and holds the fingerprint of the cell's settings now, so a
grid resumes from committed cell.json files alone. A cell.json with another fingerprint is never mixed
in: the run refuses (naming what changed) unless `rerun_changed`, which keeps a finished training run
when only the evaluation changed. Each cell runs in its own process by default (`subprocess_runner`):
GPU memory, the seed, torch and accelerate state start fresh for every cell, and a crash or an
out-of-memory error ends that cell, not the grid. `in_process` runs the same function here (tests,
debugging); any callable (cell, cell_dir) -> outcome can stand in (the tests' fake cells).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safekeel import __version__
from safekeel.errors import SafekeelError
from safekeel.experiment import execute as X
from safekeel.experiment.cells import Cell, Grid, select
from safekeel.fingerprint import sha256_json
from safekeel.io_utils import atomic_write_json, atomic_write_text
from safekeel.locking import LOCK_NAME, RunLock

CELL_FILE = "cell.json"
Runner = Callable[[Cell, Path], dict]


class CellFailed(SafekeelError):
    """A cell's worker process ended with an error (the message is its last line)."""


@dataclass
class GridReport:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def in_process(cell: Cell, cell_dir: Path) -> dict:  # `--in-process`
    return X.execute_cell(cell, cell_dir, progress=True)


def subprocess_runner(cell: Cell, cell_dir: Path) -> dict:
    """Run the cell in `python -m safekeel.experiment.execute CELL_DIR`, its output in CELL_DIR/cell.log."""
    log_path, outcome = cell_dir / "cell.log", cell_dir / X.OUTCOME
    outcome.unlink(missing_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {cell.id}\n")
        log.flush()
        proc = subprocess.run([sys.executable, "-m", "safekeel.experiment.execute", str(cell_dir)], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not outcome.is_file():
        lines = [x.strip() for x in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
        raise CellFailed(f"{lines[-1] if lines else 'no output'} (exit status {proc.returncode}; log: {log_path})")
    data = json.loads(outcome.read_text(encoding="utf-8"))
    outcome.unlink()
    return data


def cell_path(grid: Grid, cell: Cell) -> Path:
    return grid.root / "cells" / cell.id


def read_record(cell_dir: Path) -> dict | None:
    try:
        data = json.loads((cell_dir / CELL_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SafekeelError(f"{cell_dir / CELL_FILE} is unreadable ({exc}); remove it to run the cell again") from None
    return data if isinstance(data, dict) else {}


def check_cells(grid: Grid, cells: list[Cell]) -> dict[str, dict]:
    """Build and check every cell's RunConfig and evaluation inputs (no download, no model, nothing
    written); returns each cell's fingerprints. The first bad cell fails the whole grid at once.

    A cell finished with these settings (its cell.json says done and holds this fingerprint) is not
    checked further: it will be skipped, so a clone resumes from committed cell.json files without the
    inputs only finished cells need (a de-aligned `--base` built under the ignored runs/, say)."""
    out, seen = {}, set()

    def once(cell: Cell, key, check: Callable[[], None]) -> None:
        if sha256_json(key) not in seen:
            seen.add(sha256_json(key))
            try:
                check()
            except SafekeelError as exc:
                raise SafekeelError(f"cell {cell.id}: {exc}") from None

    for cell in cells:
        cfg = X.run_config(cell, cell_path(grid, cell)) if not cell.initial else None
        out[cell.id] = X.fingerprints(cell, cfg)
        if cell_state(grid, cell, out[cell.id])[0] == "done":
            continue
        if cfg is not None:
            once(cell, {k: v for k, v in cell.train.items() if k not in ("learning_rate", "seed", "poison_ratio")},
                 lambda cfg=cfg: _check_training_arguments(cfg))
        once(cell, [cell.model, cell.eval, cell.task], lambda cell=cell: X.check_eval_inputs(cell))
    return out


def _check_training_arguments(cfg) -> None:
    """`train`'s own checks (training/guard.py), imported here only: guard pulls in torch."""
    from safekeel.training import guard

    guard.check_arguments(cfg, training_args=False)


def _diff(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def describe_change(record: dict, cell: Cell, fp: dict) -> str:
    try:
        diffs = _diff(Cell.from_dict(record["settings"]).settings(), cell.settings())
    except (KeyError, TypeError):
        return "its cell.json holds no readable settings"
    diffs += [f"file {p} changed" for p, h in fp["files"].items() if (record.get("files") or {}).get(p) not in (None, h)]
    if not diffs:
        return "safekeel's resolved training options differ (a default changed?)"
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def cell_state(grid: Grid, cell: Cell, fp: dict) -> tuple[str, str]:
    """(state, why): todo | done | failed | interrupted | changed | foreign."""
    cdir = cell_path(grid, cell)
    record = read_record(cdir)
    if record is None:
        entries = [p for p in cdir.iterdir() if p.name != LOCK_NAME] if cdir.is_dir() else []
        return ("foreign", f"{cdir} holds files but no {CELL_FILE}") if entries else ("todo", "")
    if record.get("fingerprint") != fp["fingerprint"]:
        return "changed", describe_change(record, cell, fp)
    status = record.get("status")
    return {"done": ("done", ""), "failed": ("failed", record.get("error") or "")}.get(status, ("interrupted", ""))


def _fmt_left(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _refuse(states: dict[str, tuple[str, str]]) -> None:
    bad = [(cid, s, why) for cid, (s, why) in states.items() if s in ("changed", "foreign")]
    if bad:
        cid, s, why = bad[0]
        more = f" ({len(bad) - 1} more cell{'s' if len(bad) > 2 else ''} alike)" if len(bad) > 1 else ""
        what = "was run with different settings" if s == "changed" else "is not a grid cell"
        raise SafekeelError(f"cell {cid} {what} ({why}){more}; use --rerun-changed or another output dir")


def _start(grid: Grid, cell: Cell, fp: dict, state: str, why: str, rerun_changed: bool) -> dict:
    cdir = cell_path(grid, cell)
    old = (read_record(cdir) or {}) if state in ("changed", "failed", "interrupted") else {}
    kept = state == "changed" and old.get("train_fingerprint") == fp["train_fingerprint"]
    if state == "foreign" or (state == "changed" and not kept):
        assert rerun_changed
        for sub in ("train", "eval"):
            if (cdir / sub).exists():
                shutil.rmtree(cdir / sub)
    record = {"cell": cell.id, "label": cell.label, "status": "running", **fp,
              "settings_sha256": cell.settings_sha256(), "settings": cell.to_dict(), "metrics": None,
              "wall": None, "warnings": [], "error": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "finished": None, "safekeel_version": __version__}
    # A rerun that keeps the training run (only the evaluation changed, e.g. a judge added) would otherwise
    # overwrite the first run's wall times and numbers: they stay under `earlier`, newest last, and a
    # resumed (failed or interrupted) run carries them on. A retrained cell starts without them.
    earlier = list(old.get("earlier") or []) if kept or state in ("failed", "interrupted") else []
    if kept:
        earlier.append({key: old.get(key) for key in ("fingerprint", "started", "finished", "wall", "metrics",
                                                      "safekeel_version")} | {"change": why})
    if earlier:
        record["earlier"] = earlier
    atomic_write_json(cdir / CELL_FILE, record)
    return record


def run_grid(grid: Grid, *, runner: Runner | None = None, only: list[str] | None = None, dry_run: bool = False,
             tables_only: bool = False, rerun_changed: bool = False, keep_going: bool = False,
             echo: Callable[[str], None] = print) -> GridReport:
    """Run (or list, or only summarise) the grid's cells; see the module docstring."""
    report = GridReport()
    cells = select(grid.cells, only)
    if tables_only:
        with RunLock(grid.root, "experiment --tables-only"):
            report.rows = write_outputs(grid, echo)
        return report
    fps = check_cells(grid, cells)
    states = {c.id: cell_state(grid, c, fps[c.id]) for c in cells}
    if dry_run:
        for c in cells:
            state, why = states[c.id]
            echo(f"{state:<11} {c.id}" + (f"  ({why})" if why else ""))
        counts = {s: sum(v[0] == s for v in states.values()) for s in dict.fromkeys(v[0] for v in states.values())}
        echo(f"{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return report
    if not rerun_changed:
        _refuse(states)
    runner = runner or subprocess_runner
    with RunLock(grid.root, "experiment"):
        import yaml

        states = {c.id: cell_state(grid, c, fps[c.id]) for c in cells}  # again: a run may have ended meanwhile
        if not rerun_changed:
            _refuse(states)
        atomic_write_text(grid.root / "grid.yaml", f"# safekeel experiment: the grid as run ({len(grid.cells)} "
                          "cells)\n" + yaml.safe_dump(grid.config, sort_keys=False, allow_unicode=True))
        todo = [c.id for c in cells if states[c.id][0] != "done"]
        walls: list[float] = []
        for i, cell in enumerate(cells, 1):
            head = f"[{i}/{len(cells)}] {cell.id}"
            state = states[cell.id][0]
            if state == "done":
                report.skipped.append(cell.id)
                echo(f"{head}: done earlier, skipped")
                continue
            record = _start(grid, cell, fps[cell.id], state, states[cell.id][1], rerun_changed)
            echo(f"{head} … running" + (" (resuming)" if state in ("failed", "interrupted") else ""))
            t0 = time.perf_counter()
            try:
                outcome = runner(cell, cell_path(grid, cell))
            except Exception as exc:
                wall = time.perf_counter() - t0
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                record.update(status="failed", error=msg, wall={"total_s": round(wall, 2)},
                              finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
                atomic_write_json(cell_path(grid, cell) / CELL_FILE, record)
                report.failed.append((cell.id, msg))
                echo(f"{head} … FAILED after {wall:.0f} s: {msg}")
                if not keep_going:
                    if not isinstance(exc, SafekeelError):
                        raise
                    break
                continue
            wall = time.perf_counter() - t0
            warnings = list(outcome.get("warnings") or [])
            overlap = list(outcome.get("overlap_warnings") or [])  # recorded and shown; they fail nothing
            for line in overlap:
                echo(f"{head}: warning: {line}")
            record.update(status="failed" if warnings else "done", metrics=outcome["metrics"], warnings=warnings,
                          overlap_warnings=overlap,
                          error=f"judge errors: {warnings[0]}" if warnings else None,
                          wall={"train_s": outcome.get("train_s"), "eval_s": outcome.get("eval_s"),
                                "total_s": round(wall, 2)}, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_json(cell_path(grid, cell) / CELL_FILE, record)
            walls.append(wall)
            left = len(todo) - todo.index(cell.id) - 1
            mean = statistics.fmean(walls)
            if warnings:  # judge errors never pass quietly: the cell stays failed, a rerun judges them again
                report.failed.append((cell.id, record["error"]))
                echo(f"{head} … FAILED (judge errors) after {wall:.0f} s: {'; '.join(warnings)}")
            else:
                report.ran.append(cell.id)
                echo(f"{head} … done in {wall:.0f} s (mean {mean:.0f} s/cell, ~ {_fmt_left(mean * left)} left)")
            if warnings and not keep_going:
                break
        report.rows = write_outputs(grid, echo)
    return report


def collect_rows(grid: Grid, echo: Callable[[str], None] = print) -> list[dict]:
    """One row per finished cell of the grid whose cell.json was run with the grid's settings as written
    (others are named and left out: never mixed)."""
    labels, rows, stale = grid.labels(), [], []
    for cell in grid.cells:
        record = read_record(cell_path(grid, cell))
        if not record or record.get("status") != "done":
            continue
        try:
            same = Cell.from_dict(record["settings"]).settings_sha256() == cell.settings_sha256()
        except (KeyError, TypeError):
            same = False
        if not same:
            stale.append(cell.id)
            continue
        wall = record.get("wall") or {}
        rows.append({"cell": cell.id, "method": cell.method, "label": labels.get(cell.method, cell.label),
                     "defence": cell.defence, "dataset": cell.dataset, "harmful_ratio": cell.harmful_ratio,
                     "learning_rate": cell.learning_rate, "seed": cell.seed, **(record.get("metrics") or {}),
                     "train_s": wall.get("train_s"), "eval_s": wall.get("eval_s")})
    if stale:
        echo(f"warning: left out of the tables, run with other settings: {', '.join(stale[:5])}"
             + (f" and {len(stale) - 5} more" if len(stale) > 5 else ""))
    known = {c.id for c in grid.cells}
    others = [p.name for p in (grid.root / "cells").glob("*") if p.is_dir() and p.name not in known]
    if others:
        echo(f"note: cells/ holds {len(others)} cell(s) that are not in this grid (left out)")
    return rows


def _judge_text(judge) -> str:
    if not isinstance(judge, list):
        return str(judge)
    return f"{judge[0]} (further judges, their ASR and kappa in results.csv: {', '.join(judge[1:])})"


def write_outputs(grid: Grid, echo: Callable[[str], None] = print) -> list[dict]:
    """results.csv, tables.md and pareto.png from the cell.json files."""
    from safekeel.experiment import pareto, tables

    rows = collect_rows(grid, echo)
    cfg, ev = grid.config, grid.config["eval"]
    notes = [f"{len(rows)} of {len(grid.cells)} cells finished. ASR: {ev['benchmarks'][0]}"
             + (f" (first {ev['limit']})" if ev["limit"] else "") + f", judge {_judge_text(ev['judge'])}, {ev['max_new_tokens']} "
             f"new tokens. Task: test split" + (f", first {ev['task_limit']}" if ev["task_limit"] else "")
             + f", {ev['task_max_new_tokens'] or 'the task’s own number of'} new tokens."]
    tables.write_csv(grid.root / "results.csv", rows)
    tables.write_tables(grid.root / "tables.md", rows, {"name": cfg["name"], "model": cfg["model"], "notes": notes})
    pareto.plot(rows, grid.root / "pareto.png", title=f"{cfg['name']}: {cfg['model']}")
    echo(f"wrote {grid.root / 'results.csv'}, tables.md and pareto.png ({len(rows)} of {len(grid.cells)} cells)")
    return rows
