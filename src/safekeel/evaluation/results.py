"""`DIR/results.json`: one file per evaluated model, shared by `eval safety` and `eval task`.

Layout::

    {"safekeel_version", "updated", "model": {spec, kind, sha256, adapter, adapter_sha256},
     "benchmarks": {name: {"asr", "n", "judged", "errors", "ci95", "refusal_rate", "categories", "judge",
                           "generation", "samples", ..., "judges" (several judges only):
                           {further judge id: {"asr", "ci95", "n", "judged", "errors", ..., "agreement":
                           {"with", "n", "agree", "agreement", "kappa", ...}}}}},
     "tasks": {name: {"accuracy", "n", "correct", "ci95", ...}},
     "probes": {...}, "runs": [{"command", "judge", "generation", "timing", "finished"}]}

Each invocation merges its sections into the file, so safety and task results of one model live
together and `safekeel gate` / `safekeel compare` read a single file per model. A directory that
already holds results of a different model (weights or adapter hash) is refused instead of mixed.

Every write also leaves an lm-evaluation-harness twin of the merged file beside it,
`DIR/lm_eval/results_<date>.json` (a new date-stamped file per write, as lm-eval names its own; see
`safekeel.evaluation.lm_eval_layout`). `load_results` reads lm-eval results files too (one written by
lm-eval itself, or a directory of them: the newest `results_*.json`), converted to this structure, so
`gate` and `compare` accept them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from safekeel import __version__
from safekeel.errors import SafekeelError
from safekeel.io_utils import atomic_write_json

RESULTS_NAME = "results.json"
log = logging.getLogger(__name__)


def results_path(path: str | Path) -> Path:
    """`path` itself when it is a file, else `path/results.json`."""
    path = Path(path)
    return path / RESULTS_NAME if path.is_dir() or not path.suffix else path


def resolve_results_file(path: str | Path) -> Path:
    """The file `load_results(path)` reads: `path` itself when it is a file; in a directory its
    results.json, else the newest lm-eval `results_*.json` in it (or in its `lm_eval/` twin folder, or in
    its one model subfolder, as lm-eval's `--output_path` lays them out); else `results_path(path)`."""
    from safekeel.evaluation.lm_eval_layout import find_lm_eval_file

    path = Path(path)
    if path.is_dir() and not (path / RESULTS_NAME).is_file():
        found = find_lm_eval_file(path)
        if found is not None:
            return found
    return path if path.is_file() else results_path(path)


def load_results(path: str | Path) -> dict:
    """Read a results.json, or an lm-eval results file (converted by `lm_eval_layout.from_lm_eval`), or a
    directory holding either (`resolve_results_file`), and check its structure
    (`safekeel.evaluation.schema`). SafekeelError, one line, when missing, unreadable or malformed."""
    from safekeel.evaluation.lm_eval_layout import from_lm_eval, is_lm_eval
    from safekeel.evaluation.schema import validate_results

    file = resolve_results_file(path)
    if not file.is_file():
        raise SafekeelError(f"results file not found: {file} (nor an lm-eval results_*.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafekeelError(f"{file} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise SafekeelError(f"cannot read {file}: {exc.strerror or exc}") from None
    if is_lm_eval(data):
        data = from_lm_eval(data, str(file))
    return validate_results(data, str(file))


def _same_model(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return True
    return a.get("sha256") == b.get("sha256") and a.get("adapter_sha256") == b.get("adapter_sha256")


def check_output_dir(out_dir: Path, fingerprint: dict, overwrite: bool = False) -> None:
    """Refuse to mix results of two models in one directory (unless `overwrite`)."""
    file = out_dir / RESULTS_NAME
    if overwrite or not file.is_file():
        return
    try:
        old = json.loads(file.read_text(encoding="utf-8")).get("model")
    except (json.JSONDecodeError, AttributeError):
        return  # an unreadable old file is replaced
    if not _same_model(old, fingerprint):
        raise SafekeelError(f"{out_dir} holds results of another model ({old.get('spec')}, adapter "
                            f"{old.get('adapter')}); use a new --output-dir or pass --overwrite")


def merge_results(out_dir: Path, fingerprint: dict, sections: dict, run: dict, *, overwrite: bool = False,
                  top: dict | None = None) -> dict:
    """Merge `sections` ({"benchmarks": {...}, "tasks": {...}, "probes": {...}}) into DIR/results.json.

    `top` sets top-level keys (e.g. the last `judge` and `generation` settings); `run` is appended to
    `runs`. Returns the written content."""
    file = Path(out_dir) / RESULTS_NAME
    data: dict = {}
    if file.is_file():
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
    if overwrite and not _same_model(data.get("model"), fingerprint):
        data = {}  # --overwrite with another model: start afresh rather than mix two models' results
    data["safekeel_version"] = __version__
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data["model"] = fingerprint
    data.update(top or {})
    for name, entries in sections.items():
        if name == "probes":
            data["probes"] = {**data.get("probes", {}), **entries}
        else:
            data.setdefault(name, {}).update(entries)
    data.setdefault("benchmarks", {})
    data.setdefault("tasks", {})
    data.setdefault("runs", []).append({**run, "safekeel_version": __version__, "finished": data["updated"]})
    atomic_write_json(file, data)
    _write_twin(Path(out_dir), data)
    return data


def _write_twin(out_dir: Path, data: dict) -> None:
    """The lm-eval twin of what was just written. results.json is the record; a twin that cannot be
    written (a full disk, a bug in the converter) must not fail an evaluation whose results are saved,
    so it is a logged warning."""
    from safekeel.evaluation.lm_eval_layout import write_twin

    try:
        write_twin(out_dir, data)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not write the lm-eval copy of %s: %s", out_dir / RESULTS_NAME, exc)
