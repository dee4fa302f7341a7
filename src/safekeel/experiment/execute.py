"""One cell, in this process: train (unless its run is already done), `eval safety`, `eval task`, metrics.

The same functions as the CLI: `training.run.train(RunConfig)`, `evaluation.safety.run_safety_eval`,
`evaluation.task.run_task_eval`. A cell resumes wherever it stopped: a train directory whose
`safekeel_run.json` says done is not trained again, one with checkpoints continues from the latest
(`--resume`), one with a half-written run starts over (`--overwrite`); the evaluations reuse every stored
answer (a fully evaluated cell never loads the model). Also the settings fingerprints that tell whether a
cell.json belongs to these settings, the cheap checks of every cell's inputs, and the worker
`python -m safekeel.experiment.execute CELL_DIR` that the grid runs each cell in (see runner.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from safekeel.data.packaged_data import DATA_VERSION
from safekeel.errors import SafekeelError
from safekeel.experiment.cells import Cell
from safekeel.fingerprint import file_fingerprint, sha256_json

log = logging.getLogger(__name__)

OUTCOME = ".outcome.json"  # the worker's result, read and removed by the runner
# RunConfig fields and training options that do not change what a run learns (left out of the fingerprint)
RUN_LOCAL = ("output_dir", "resume", "overwrite", "reference_cache", "reference_cache_dir", "reference_batch_size")
TRAINING_LOCAL = ("disable_tqdm", "dataloader_num_workers", "report_to", "logging_steps", "save_steps",
                  "save_total_limit")


def run_config(cell: Cell, cell_dir: Path, **extra):
    """The cell's validated RunConfig (train into CELL_DIR/train); errors name the cell."""
    from safekeel.training.config import build_config

    try:
        return build_config({**cell.train, "output_dir": str(Path(cell_dir) / "train"), **extra})
    except SafekeelError as exc:
        raise SafekeelError(f"cell {cell.id}: {exc}") from None


def _resolved(cfg) -> dict:
    # WATCH_ONLY: left out so that cells committed before those options existed still match
    # (tests/test_experiment.py checks the committed replication's cells)
    from safekeel.training.config import WATCH_ONLY

    d = cfg.to_dict()
    d = {k: v for k, v in d.items() if k not in RUN_LOCAL}
    d["training"] = {k: v for k, v in d["training"].items() if k not in TRAINING_LOCAL}
    d["monitor"] = {k: v for k, v in d["monitor"].items() if k not in WATCH_ONLY}
    return d


def input_files(*objs) -> dict[str, str]:
    """{path: content fingerprint} of every string in `objs` that names an existing file (tokens, data,
    harmful set, benchmark and task files): a file rewritten under the same name changes the settings."""
    out: dict[str, str] = {}

    def walk(x) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, str) and x and len(x) < 4096:
            p = Path(x).expanduser()
            if p.is_file():
                out[x] = file_fingerprint(p)

    for obj in objs:
        walk(obj)
    return out


def fingerprints(cell: Cell, cfg=None) -> dict:
    """{"fingerprint", "train_fingerprint", "files"}: sha256 of the cell's settings, its fully resolved
    training options (safekeel's defaults included) and the contents of its input files. The train part
    alone decides whether `--rerun-changed` may keep a finished training run."""
    s = cell.settings()
    train_part = {k: s[k] for k in ("model", "defence", "method", "data", "harmful_ratio", "learning_rate",
                                    "seed", "train")}
    files_train, files_eval = input_files(cell.train), input_files(cell.eval, cell.task)
    # packaged names (strongreject-harmful, harmbench, ...) are not files: their content is versioned
    train_fp = sha256_json({**train_part, "resolved": _resolved(cfg) if cfg is not None else None,
                            "files": files_train, "packaged_data": DATA_VERSION})
    fp = sha256_json({"train": train_fp, "eval": s["eval"], "task": cell.task, "files": files_eval,
                      "packaged_data": DATA_VERSION})
    return {"fingerprint": fp, "train_fingerprint": train_fp, "files": {**files_train, **files_eval}}


def check_eval_inputs(cell: Cell) -> None:
    """The evaluation's cheap checks: model spec, benchmark sets, judge specs, task, and that no further
    judge's results.csv column would be a further benchmark's."""
    from safekeel.data.prompts import prompt_spec
    from safekeel.evaluation.safety import benchmark_names
    from safekeel.evaluation.task import resolve_task
    from safekeel.models.specs import model_spec

    model_spec(cell.model)
    for spec in cell.eval["benchmarks"]:
        prompt_spec(spec, "eval.benchmarks")
    names = benchmark_names(cell.eval["benchmarks"])
    judges = make_judges(cell.eval)
    clash = {f"asr_{n}" for n in names[1:]} & {f"asr_{j.id}" for j in judges[1:]}
    if clash:
        raise SafekeelError(f"eval: results.csv would have two columns {min(clash)} (a benchmark and a judge "
                            "of that name); rename the benchmark file")
    resolve_task(cell.task)


def make_judges(ev: dict) -> list:
    """The judges of `eval.judge` (one spec or a list, the primary first), built (and so checked) without
    loading a model (as `eval safety` does)."""
    from safekeel.judges.registry import build_judges

    specs = ev["judge"] if isinstance(ev["judge"], list) else str(ev["judge"])
    return build_judges(specs, judge_format=ev.get("judge_format"), device=ev["device"], dtype=ev["dtype"],
                        batch_size=ev["judge_batch_size"], trust_remote_code=ev["trust_remote_code"],
                        judge_flag="judge", format_flag="eval.judge_format")


def _train(cell: Cell, cell_dir: Path, progress: bool) -> tuple[object, float]:
    """(RunConfig, seconds): trains unless the train directory holds a finished run."""
    from safekeel.training.run import train

    tdir = cell_dir / "train"
    try:
        record = json.loads((tdir / "safekeel_run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if record.get("status") == "done":
        log.info("%s: training finished earlier; evaluating", cell.id)
        return run_config(cell, cell_dir), float(record.get("wall_seconds") or 0.0)
    entries = [p for p in tdir.iterdir() if p.name != ".safekeel.lock"] if tdir.is_dir() else []
    mode = {"resume": True} if any(tdir.glob("checkpoint-*")) else {"overwrite": True} if entries else {}
    cfg = run_config(cell, cell_dir, **mode)
    t0 = time.perf_counter()
    train(cfg, progress=progress)
    from safekeel.generators import free_memory

    free_memory()
    return cfg, time.perf_counter() - t0


def metrics(results: dict, cell: Cell, task_name: str) -> dict:
    """The cell's numbers from its results.json: ASR (first benchmark) with its interval, over-refusal on
    both held-out sets, task accuracy and cut-off share, every benchmark's ASR, and for each further
    judge its ASR and its Cohen's kappa with the primary judge on the first benchmark (`asr_<judge id>`,
    `kappa_<judge id>`)."""
    from safekeel.evaluation.safety import benchmark_names

    names = benchmark_names(cell.eval["benchmarks"])
    bench = results.get("benchmarks", {})
    first = bench.get(names[0]) or {}
    probes = results.get("probes") or {}
    every, risky = probes.get("over_refusal_everyday") or {}, probes.get("over_refusal") or {}
    task = (results.get("tasks") or {}).get(task_name) or {}
    ci, tci = first.get("ci95") or [None, None], task.get("ci95") or [None, None]
    out = {"benchmark": names[0], "asr": first.get("asr"), "asr_ci_low": ci[0], "asr_ci_high": ci[1],
           "asr_n": first.get("n"), "over_refusal_everyday": every.get("rate"), "over_refusal_everyday_n": every.get("n"),
           "over_refusal_risky": risky.get("rate"), "over_refusal_risky_n": risky.get("n"), "task": task_name,
           "task_accuracy": task.get("accuracy"), "task_ci_low": tci[0], "task_ci_high": tci[1],
           "task_n": task.get("n"), "task_cutoff_rate": task.get("cut_off_rate")}
    for name in names[1:]:
        out[f"asr_{name}"] = (bench.get(name) or {}).get("asr")
    for jid, j in (first.get("judges") or {}).items():
        out[f"asr_{jid}"] = j.get("asr")
        out[f"kappa_{jid}"] = (j.get("agreement") or {}).get("kappa")
    return out


def execute_cell(cell: Cell, cell_dir: str | Path, *, progress: bool = False) -> dict:
    """Run one cell; returns {"train_s", "eval_s", "metrics", "warnings", "overlap_warnings"} (the runner
    writes cell.json)."""
    from safekeel.data.leakage import run_groups
    from safekeel.evaluation.probes import parse_probes
    from safekeel.evaluation.safety import (
        SafetyConfig,
        benchmark_names,
        judge_error_warnings,
        run_safety_eval,
    )
    from safekeel.evaluation.task import TaskConfig, resolve_task, run_task_eval
    from safekeel.generators import LazyGenerator, free_memory

    cell_dir = Path(cell_dir)
    model, adapter, train_s = cell.model, None, 0.0
    if not cell.initial:
        cfg, train_s = _train(cell, cell_dir, progress)
        if cfg.lora.full:
            model = str(cell_dir / "train")
        else:
            adapter = str(cell_dir / "train")
    ev, edir = cell.eval, cell_dir / "eval"
    t0 = time.perf_counter()

    def generator(max_new_tokens: int):
        return LazyGenerator(model, adapter=adapter, backend=ev["backend"], dtype=ev["dtype"], device=ev["device"],
                             trust_remote_code=ev["trust_remote_code"], max_new_tokens=max_new_tokens,
                             batch_size=ev["batch_size"], progress=progress)

    extra = {"cell": cell.id}
    fitted = run_groups(adapter, model)  # what the cell's training run was fitted on (docs/leakage.md)
    results = run_safety_eval(generator(ev["max_new_tokens"]), make_judges(ev), edir, SafetyConfig(
        ev["benchmarks"], limit=ev["limit"], prompt_field=ev["prompt_field"], system=ev["system"],
        probes=parse_probes(",".join(ev["probes"])), progress=progress, command="experiment: eval safety", extra=extra,
        fitted=fitted))
    warnings = judge_error_warnings(results, benchmark_names(ev["benchmarks"]), ev["max_judge_errors"])
    # reported beside the judge-error warnings, not among them: those fail the cell, an overlap does not
    overlap = [w for b in results.get("benchmarks", {}).values() for w in b.get("overlap_warnings") or []]
    task = resolve_task(cell.task)
    results = run_task_eval(generator(ev["task_max_new_tokens"] or task.max_new_tokens), task, edir, TaskConfig(
        split=ev["task_split"], limit=ev["task_limit"], seed=ev["task_seed"], system=ev["system"],
        progress=progress, command="experiment: eval task", extra=extra), spec=cell.task)
    free_memory()
    return {"train_s": round(train_s, 2), "eval_s": round(time.perf_counter() - t0, 2),
            "metrics": metrics(results, cell, task.name), "warnings": warnings, "overlap_warnings": overlap}


def main(argv: list[str] | None = None) -> int:
    """The worker: run the cell whose cell.json is in CELL_DIR and write its outcome beside it."""
    from safekeel.io_utils import atomic_write_json

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m safekeel.experiment.execute CELL_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cell_dir = Path(argv[0])
    try:
        record = json.loads((cell_dir / "cell.json").read_text(encoding="utf-8"))
        cell = Cell.from_dict(record["settings"])
        atomic_write_json(cell_dir / OUTCOME, execute_cell(cell, cell_dir))
    except SafekeelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
