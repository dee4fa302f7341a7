"""What a report covers: the training runs, evaluation directories and experiment grids under a directory.

A directory (searched to `MAX_DEPTH` levels below the root; `checkpoint-*` and hidden directories are
skipped) is
- a training run when it holds `train_log.jsonl` or `safekeel_run.json`;
- an evaluation when it holds `results.json` (its `samples_*.jsonl` are read when a section needs them);
- a grid (`safekeel experiment`) when it holds `grid.yaml`, or `results.csv` next to `cells/`; the runs
  under `cells/<cell_id>/` belong to that cell.

Outside grids, an evaluation belongs to the training run its results name (`model.adapter`, or
`model.spec` for a full fine-tune), matched by path (the longest common tail of path components, so a
moved tree still matches); a model is named by its training directory, else by its evaluation
directory. Evaluations of the same weights (several judges over one model's answers) share a model.
Unreadable files are listed in `Scan.problems`, never fatal.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.errors import SafekeelError

MAX_DEPTH = 4
TRAIN_FILES = ("train_log.jsonl", "safekeel_run.json")


@dataclass
class TrainRun:
    path: Path
    rel: str
    log: list[dict]  # log lines without an "event" key (training logs and monitor records)
    events: list[dict]  # {"event": "safety_rollback" | "safety_warning" | ..., "step", ...}
    run: dict  # safekeel_run.json, {} when absent

    @property
    def options(self) -> dict:
        return self.run.get("options") or {}


@dataclass
class EvalRun:
    path: Path
    rel: str
    results: dict
    _samples: dict = field(default_factory=dict, repr=False)

    def samples(self, filename: str | None) -> list[dict]:
        """Rows of one sample file of this evaluation ([] when missing or unreadable)."""
        if not filename or Path(filename).name != filename:
            return []
        if filename not in self._samples:
            from safekeel.evaluation.samples import read_samples

            try:
                self._samples[filename] = read_samples(self.path / filename)
            except (OSError, UnicodeDecodeError):
                self._samples[filename] = []
        return self._samples[filename]

    @property
    def fingerprint(self) -> tuple:
        model = self.results.get("model") or {}
        return model.get("sha256"), model.get("adapter_sha256"), model.get("spec"), model.get("adapter")


@dataclass
class Model:
    label: str
    train: TrainRun | None = None
    evals: list[EvalRun] = field(default_factory=list)
    cell: dict | None = None  # cells/<id>/cell.json of a grid cell


@dataclass
class Grid:
    path: Path
    rel: str
    spec_text: str | None  # grid.yaml
    tables_md: str | None
    pareto_png: bytes | None
    results_csv: list[dict]
    cells: list[Model]


@dataclass
class Scan:
    root: Path
    scanned_at: str
    models: list[Model]  # outside grids
    grids: list[Grid]
    problems: list[str]

    def all_models(self) -> list[Model]:
        return [*self.models, *(m for g in self.grids for m in g.cells)]

    def train_runs(self) -> list[TrainRun]:
        return [m.train for m in self.all_models() if m.train]

    def eval_runs(self) -> list[EvalRun]:
        return [e for m in self.all_models() for e in m.evals]


def _walk(root: Path, max_depth: int) -> list[tuple[Path, set[str]]]:
    """[(directory, names in it)] for the root and its subdirectories down to `max_depth`, sorted."""
    out, todo = [], [(root, 0)]
    while todo:
        path, depth = todo.pop()
        try:
            entries = list(path.iterdir())
        except OSError:
            continue
        out.append((path, {e.name for e in entries}))
        if depth < max_depth:
            for e in sorted(entries, reverse=True):
                if e.is_dir() and not e.is_symlink() and not e.name.startswith((".", "checkpoint-", "__")):
                    todo.append((e, depth + 1))
    return sorted(out, key=lambda item: item[0].parts)


def _read_text(path: Path, problems: list[str]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None


def read_train_run(path: Path, rel: str, problems: list[str]) -> TrainRun:
    log, events, bad = [], [], 0
    text = _read_text(path / "train_log.jsonl", problems) or ""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            (events if "event" in row else log).append(row)
    if bad:
        problems.append(f"{path / 'train_log.jsonl'}: skipped {bad} unreadable line(s)")
    run: dict = {}
    text = _read_text(path / "safekeel_run.json", problems)
    if text is not None:
        try:
            run = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{path / 'safekeel_run.json'}: not valid JSON ({exc})")
        if not isinstance(run, dict):
            run = {}
    return TrainRun(path, rel, log, events, run)


def read_eval_run(path: Path, rel: str, problems: list[str]) -> EvalRun | None:
    from safekeel.evaluation.results import load_results

    try:
        return EvalRun(path, rel, load_results(path))
    except SafekeelError as exc:
        problems.append(str(exc))
        return None


def _tail_match(target: str | None, path: Path) -> int:
    """How many trailing path components `target` shares with `path` (0 when none)."""
    if not target:
        return 0
    a, b = Path(target).parts, path.resolve().parts
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _owner(ev: EvalRun, trains: list[TrainRun]) -> TrainRun | None:
    """The training run whose output the evaluation's model is (None when none or ambiguous)."""
    model = ev.results.get("model") or {}
    target = model.get("adapter") or model.get("spec")
    scores = [(_tail_match(target, t.path), t) for t in trains]
    best = max((s for s, _ in scores), default=0)
    hits = [t for s, t in scores if s == best]
    return hits[0] if best and len(hits) == 1 else None


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return root.resolve().name if rel == "." else rel


def group_models(trains: list[TrainRun], evals: list[EvalRun]) -> list[Model]:
    """Models outside grids: each training run with the evaluations of its output, then evaluations
    of models trained elsewhere, grouped by weights; base models (nothing trained) first."""
    by_train = {id(t): Model(t.rel, train=t) for t in trains}
    loose: dict[tuple, Model] = {}
    for ev in evals:
        owner = _owner(ev, trains)
        if owner is not None:
            by_train[id(owner)].evals.append(ev)
        else:
            loose.setdefault(ev.fingerprint, Model(ev.rel)).evals.append(ev)
    return sorted([*loose.values(), *by_train.values()], key=lambda m: (m.train is not None, m.label))


def _read_grid(path: Path, rel: str, runs: dict[Path, tuple], problems: list[str]) -> Grid:
    cells: dict[str, Model] = {}
    try:  # cells that never got as far as a run (failed early, not started) still have their cell.json
        for d in sorted((path / "cells").iterdir()) if (path / "cells").is_dir() else []:
            if (d / "cell.json").is_file():
                cells.setdefault(d.name, Model(d.name))
    except OSError as exc:
        problems.append(f"{path / 'cells'}: unreadable ({exc})")
    for run_path, (train, ev) in runs.items():
        parts = run_path.relative_to(path).parts
        if len(parts) < 2 or parts[0] != "cells":
            continue
        cell = cells.setdefault(parts[1], Model(parts[1]))
        if train is not None and cell.train is None:
            cell.train = train
        if ev is not None:
            cell.evals.append(ev)
    for cell_id, cell in cells.items():
        text = _read_text(path / "cells" / cell_id / "cell.json", problems)
        try:
            cell.cell = json.loads(text) if text else None
        except json.JSONDecodeError:
            problems.append(f"{path / 'cells' / cell_id / 'cell.json'}: not valid JSON")
    rows: list[dict] = []
    text = _read_text(path / "results.csv", problems)
    if text:
        rows = list(csv.DictReader(text.splitlines()))
    order = {r.get("cell"): i for i, r in enumerate(rows)}
    try:
        pareto = (path / "pareto.png").read_bytes() if (path / "pareto.png").is_file() else None
    except OSError as exc:
        problems.append(f"{path / 'pareto.png'}: unreadable ({exc})")
        pareto = None
    return Grid(path, rel, _read_text(path / "grid.yaml", problems), _read_text(path / "tables.md", problems),
                pareto, rows, sorted(cells.values(), key=lambda m: (order.get(m.label, len(order)), m.label)))


def scan(root: str | Path, max_depth: int = MAX_DEPTH) -> Scan:
    """Everything a report shows about `root`. SafekeelError when `root` is no directory or holds nothing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SafekeelError(f"{root} is not a directory")
    problems: list[str] = []
    runs: dict[Path, tuple] = {}  # directory -> (TrainRun | None, EvalRun | None)
    grid_dirs = []
    for path, names in _walk(root, max_depth):
        rel = _rel(path, root)
        if "grid.yaml" in names or ("results.csv" in names and "cells" in names):
            grid_dirs.append(path)
        train = read_train_run(path, rel, problems) if names & set(TRAIN_FILES) else None
        ev = read_eval_run(path, rel, problems) if "results.json" in names else None
        if train is not None or ev is not None:
            runs[path] = (train, ev)
    grids = [_read_grid(g, _rel(g, root), {p: r for p, r in runs.items() if g / "cells" in p.parents}, problems)
             for g in grid_dirs]
    outside = {p: r for p, r in runs.items() if not any(g / "cells" in p.parents for g in grid_dirs)}
    models = group_models([t for t, _ in outside.values() if t], [e for _, e in outside.values() if e])
    if not models and not grids:
        unread = f"; unreadable: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "") \
            if problems else ""
        raise SafekeelError(f"no training run (train_log.jsonl, safekeel_run.json), evaluation (results.json) "
                            f"or grid (grid.yaml) under {root} (searched {max_depth} levels deep){unread}")
    return Scan(root, time.strftime("%Y-%m-%d %H:%M:%S %Z"), models, grids, problems)
