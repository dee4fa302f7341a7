"""The grid file of `safekeel experiment`: reading, checking and normalising it (cells.py expands it).

A grid is one model × methods × datasets × harmful ratios × learning rates × seeds; `blocks` (each a
small grid over a subset of the methods, with its own axes) are unioned, so "SFT and PACT with 3 seeds at
three ratios, the other defences with 1 seed at one ratio" is one readable file. Precedence of an axis
for a method in a block: the block's value, else the method entry's, else the top level's. Unknown keys
are errors naming the key; the normalised grid is what GRID_DIR/grid.yaml holds (docs/experiments.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.experiment.cells import AXES, INITIAL, Grid, expand

TOP_KEYS = ("name", "model", "output_dir", "initial", "methods", "datasets", "harmful", "harmful_ratios",
            "learning_rates", "seeds", "train", "eval", "blocks", "cells")
METHOD_KEYS = ("name", "id", "label", "options", "datasets", "harmful_ratios", "learning_rates", "seeds")
BLOCK_KEYS = ("name", "methods", "datasets", "harmful_ratios", "learning_rates", "seeds")
DATASET_KEYS = ("name", "task", "id")
# set per cell by the grid: never in `train:` or a method's `options:`
PER_CELL = {"method": "methods", "model": "model", "dataset": "datasets", "dataset_name": "datasets",
            "model_name_or_path": "model", "harmful": "harmful", "poison_ratio": "harmful_ratios",
            "learning_rate": "learning_rates", "seed": "seeds", "output_dir": "output_dir", "resume": None,
            "resume_from_checkpoint": None, "overwrite": None, "overwrite_output_dir": None}
EVAL_DEFAULTS: dict = {
    "benchmarks": ["harmbench", "strongreject-heldout"], "limit": None, "judge": "keyword", "judge_format": None,
    "judge_batch_size": 8, "max_new_tokens": 256, "batch_size": None, "backend": "hf", "dtype": "auto",
    "device": "auto", "system": None, "prompt_field": "prompt", "probes": ["everyday", "over-refusal"],
    "max_judge_errors": 0.05, "task_limit": None, "task_max_new_tokens": None, "task_split": "test", "task_seed": 0,
}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _slug(spec: str) -> str:
    p = Path(spec)
    base = p.stem if p.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet") else spec
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", base).strip("-") or "data"


def _keys(where: str, data, allowed) -> dict:
    if not isinstance(data, dict):
        raise SafekeelError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise SafekeelError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    return data


def _mapping(where: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SafekeelError(f"{where} must be a mapping of option names to values, got {type(value).__name__}")
    return dict(value)


def _list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _axis(where: str, name: str, value) -> list:
    out = []
    for item in _list(value):
        try:
            x = int(item) if name == "seeds" else float(item)  # YAML reads 2e-4 as text
        except (TypeError, ValueError):
            raise SafekeelError(f"{where}.{name}: {item!r} is not a number") from None
        if name == "seeds" and (isinstance(item, float) and item != int(item) or not 0 <= x < 2**32):
            raise SafekeelError(f"{where}.seeds: {item!r} is not a seed (an integer 0..2**32-1)")
        if name == "harmful_ratios" and not 0.0 <= x <= 1.0:
            raise SafekeelError(f"{where}.harmful_ratios: {item!r} is not between 0 and 1")
        if name == "learning_rates" and not x > 0:
            raise SafekeelError(f"{where}.learning_rates: {item!r} must be positive")
        out.append(x)
    return list(dict.fromkeys(out))


def _no_per_cell(where: str, options: dict) -> dict:
    from safekeel.training.config import normalise_key

    for key in options:
        if normalise_key(key) in PER_CELL or key in PER_CELL:
            home = PER_CELL.get(normalise_key(key)) or PER_CELL.get(key)
            raise SafekeelError(f"{where}: {key} is set per cell by the grid" + (f" (use `{home}:`)" if home else ""))
    return dict(options)


def _method(i: int, entry) -> dict:
    from safekeel.defences.registry import defence_names

    entry = {"name": entry} if isinstance(entry, str) else _keys(f"methods[{i}]", entry, METHOD_KEYS)
    name = str(entry.get("name") or "").strip()
    if name == INITIAL:
        raise SafekeelError(f"methods[{i}]: the untrained model is `initial: true` at the top, not a method")
    if name not in defence_names():
        raise SafekeelError(f"methods[{i}]: unknown method {name!r}; choose {', '.join(defence_names())}")
    mid = str(entry.get("id") or name)
    if not _ID.match(mid) or "__" in mid or mid == INITIAL:
        raise SafekeelError(f"methods[{i}]: id {mid!r} must be letters, digits, '.', '+', '-' or '_' (no '__')")
    out = {"name": name, "id": mid, "label": str(entry.get("label") or mid),
           "options": _no_per_cell(f"methods[{mid}].options", _mapping(f"methods[{mid}].options", entry.get("options")))}
    for axis in AXES:
        if axis in entry:
            out[axis] = [str(d) for d in _list(entry[axis])] if axis == "datasets" else _axis(mid, axis, entry[axis])
    return out


def _dataset(i: int, entry) -> dict:
    entry = {"name": entry} if isinstance(entry, str) else _keys(f"datasets[{i}]", entry, DATASET_KEYS)
    name = str(entry.get("name") or "").strip()
    if not name:
        raise SafekeelError(f"datasets[{i}]: name (the training data: a task name or a file) is required")
    did = str(entry.get("id") or _slug(name))
    if not _ID.match(did) or "__" in did:
        raise SafekeelError(f"datasets[{i}]: id {did!r} must be letters, digits, '.', '+', '-' or '_' (no '__')")
    return {"name": name, "task": str(entry.get("task") or name), "id": did}


def _judges(data: dict) -> str | list[str]:
    """`eval.judge` (or `eval.judges`): one spec, a comma list or a YAML list; normalised to the spec
    itself for one judge (as before several were possible, so existing grids keep their fingerprints)
    and to a list for several (the primary first)."""
    from safekeel.judges.registry import split_judge_specs

    if "judge" in data and "judges" in data:
        raise SafekeelError("eval: give judge or judges, not both (judge: [keyword, rubric:MODEL] is a list too)")
    value = data.get("judges", data.get("judge", EVAL_DEFAULTS["judge"]))
    key = "judges" if "judges" in data else "judge"
    if isinstance(value, list):
        specs = [str(x).strip() for x in value if x is not None and str(x).strip()]
    elif isinstance(value, str):
        specs = split_judge_specs(value)
    else:
        raise SafekeelError(f"eval.{key} must be a judge spec or a list of them, got {value!r}")
    if not specs:
        raise SafekeelError(f"eval.{key} names no judge")
    if len(specs) == 1 and isinstance(value, str) and value.strip() == specs[0]:
        return value  # unchanged, as before lists existed
    return specs[0] if len(specs) == 1 else specs


def _eval(data, train: dict) -> dict:
    from safekeel.evaluation.probes import DEFAULT_PROBES, PROBES, parse_probes

    data = _keys("eval", data or {}, (*EVAL_DEFAULTS, "judges", "trust_remote_code"))
    ev = {**EVAL_DEFAULTS, "trust_remote_code": bool(train.get("trust_remote_code", False)), **data}
    ev["judge"] = _judges(data)
    ev.pop("judges", None)
    bench = ev["benchmarks"]
    ev["benchmarks"] = [b.strip() for b in (bench.split(",") if isinstance(bench, str) else bench) if str(b).strip()]
    if not ev["benchmarks"]:
        raise SafekeelError("eval.benchmarks is empty")
    probes = ev["probes"]
    sets = parse_probes(",".join(map(str, probes)) if isinstance(probes, list) else str(probes))
    ev["probes"] = [{v: k for k, v in PROBES.items()}[s] for s in sets]  # the names `--probes` takes
    if not set(DEFAULT_PROBES) <= set(sets):
        raise SafekeelError("eval.probes must include the over-refusal sets (everyday, over-refusal): a grid "
                            "never reports an ASR without them")
    return ev


def normalise(data: dict, output_dir: str | None = None) -> dict:
    """The checked, normalised grid (what grid.yaml holds); SafekeelError naming the key otherwise."""
    data = _keys("grid", data, TOP_KEYS)
    if not data.get("model"):
        raise SafekeelError("grid: model is required")
    out_dir = output_dir or data.get("output_dir")
    if not out_dir:
        raise SafekeelError("grid: output_dir is required (or give --output-dir)")
    methods = [_method(i, m) for i, m in enumerate(_list(data.get("methods")))]
    ids = [m["id"] for m in methods]
    for mid in ids:
        if ids.count(mid) > 1:
            raise SafekeelError(f"methods: {mid!r} appears twice; give each entry its own id (e.g. id: {mid}-l3)")
    datasets = [_dataset(i, d) for i, d in enumerate(_list(data.get("datasets")))]
    if not datasets:
        raise SafekeelError("grid: datasets is required (e.g. [arith])")
    dids = [d["id"] for d in datasets]
    if len(set(dids)) < len(dids):
        raise SafekeelError(f"datasets: two entries share the id {next(d for d in dids if dids.count(d) > 1)!r}")
    if not isinstance(data.get("initial", True), bool):
        raise SafekeelError(f"grid: initial must be true or false, got {data['initial']!r}")
    train = _no_per_cell("train", _mapping("train", data.get("train")))
    blocks = []
    for i, b in enumerate(_list(data.get("blocks"))):
        b = _keys(f"blocks[{i}]", b, BLOCK_KEYS)
        block = {"name": str(b.get("name") or f"block {i + 1}"), "methods": [str(m) for m in _list(b.get("methods"))]}
        unknown = [m for m in block["methods"] if m not in ids]
        if unknown:
            raise SafekeelError(f"blocks[{i}].methods: {unknown[0]!r} is not a method id (ids: {', '.join(ids)})")
        for axis in AXES:
            if axis in b:
                block[axis] = [str(d) for d in _list(b[axis])] if axis == "datasets" else _axis(f"blocks[{i}]", axis, b[axis])
        blocks.append(block)
    out = {"name": str(data.get("name") or Path(str(out_dir)).name), "model": str(data["model"]),
           "output_dir": str(out_dir), "initial": data.get("initial", True),
           "harmful": str(data["harmful"]) if data.get("harmful") else None, "methods": methods,
           "datasets": datasets, "train": train, "eval": _eval(data.get("eval"), train)}
    for axis in AXES[1:]:
        out[axis] = _axis("grid", axis, data.get(axis))
    out["blocks"] = blocks
    out["cells"] = [str(c) for c in _list(data.get("cells"))]
    for d in [d for x in methods + blocks for d in x.get("datasets", [])]:
        if d not in dids and d not in [x["name"] for x in datasets]:
            raise SafekeelError(f"datasets: {d!r} is used but not declared at the top level (declared: {', '.join(dids)})")
    return out


def load_grid(source: str | Path | dict, output_dir: str | None = None) -> Grid:
    """A Grid from a YAML file, a grid directory (its grid.yaml; the directory is the output dir) or a dict."""
    from safekeel.io_utils import load_yaml_mapping

    if isinstance(source, dict):
        data = source
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            output_dir = output_dir or str(path)
            path = path / "grid.yaml"
        data = load_yaml_mapping(path, "grid file", hint="(model:, methods:, datasets:, ...)")
    config = normalise(data, output_dir)
    return Grid(config, expand(config), Path(config["output_dir"]).expanduser())


