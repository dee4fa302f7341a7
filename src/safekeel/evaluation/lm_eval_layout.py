"""results.json <-> lm-evaluation-harness results files (the layout of lm-eval 0.4.x).

An lm-eval results file (`<output_path>/<model>/results_<ISO date, ':' as '-'>.json`) holds::

    {"results": {task: {"alias", "<metric>,<filter>": value, "<metric>_stderr,<filter>": value}},
     "group_subtasks": {group or task: [subtasks]}, "configs": {task: {..., "metadata": {"version"}}},
     "versions": {task: version}, "n-shot": {task: n}, "higher_is_better": {task: {metric: bool}},
     "n-samples": {task: {"original", "effective"}}, "config": {"model", "model_args", "model_sha",
     "batch_size", "limit", "gen_kwargs", ...}, "git_hash", "date" (unix time), "model_name", ...}

`to_lm_eval` writes a safekeel results.json in that layout, so tools that read lm-eval output (leaderboard
scripts, lm-eval's own `--output_path` parsers) read safekeel's numbers too: every safety benchmark is a
task with `asr` (lower is better) and `refusal_rate` (higher is better), each with its `_stderr`, filter
"none"; every over-refusal set a task with `refusal_rate` (lower is better); every accuracy task a task
with `acc`. The judge (its id, e.g. `keyword` or `keyword:gcg`) goes to `config.judge` and to each
benchmark's `configs.<task>.metadata.safekeel.judge`, with the counts the ASR came from, so reading the
twin back (`from_lm_eval`) gives the same numbers. `merge_results` writes one such twin per write, as
`DIR/lm_eval/results_<date>.json` (`write_twin`).

`from_lm_eval` reads any lm-eval results file (written by lm-eval itself, or a twin) into the structure
`gate` and `compare` use: `tasks.<name>` with `accuracy` (the task's headline metric, see `pick_metric`),
`n` (`n-samples.effective`), a Wilson `ci95` and the metric's name; an `asr` metric becomes a benchmark.
A group is read through its own aggregate when lm-eval wrote one (mmlu, not its 57 subjects).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.evaluation.probes import OVER_REFUSAL_LABELS
from safekeel.evaluation.stats import wilson_interval
from safekeel.io_utils import atomic_write_json

TWIN_DIR = "lm_eval"
VERSION = 1.0  # of the tasks safekeel writes; bumped if what a metric means changes
# headline metric of a task, first found wins; then any other metric in [0, 1] that is higher-is-better
METRIC_ORDER = ("acc", "exact_match", "acc_norm", "em", "f1", "mcc")
FILTER_ORDER = ("none", "strict-match")  # then the file's order (flexible-extract, ...)
# lower-is-better metrics lm-eval reports, for a file without `higher_is_better` (and our own rates)
_NOT_ACCURACY = ("perplexity", "bits_per_byte", "ter", "loss", "asr", "refusal_rate")
_NAME = re.compile(r"results_(\d{4}-\d\d-\d\dT\d\d)-(\d\d)-(\d\d(?:\.\d+)?)\.json")


def _stderr(p: float | None, n: int) -> float | str:
    """lm-eval's `mean_stderr` of a 0/1 metric (sample standard deviation / sqrt(n)); "N/A" as lm-eval
    writes it where undefined."""
    if p is None or n < 2:
        return "N/A"
    return math.sqrt(p * (1 - p) / (n - 1))


# what a twin keeps of each entry in `configs.<task>.metadata.safekeel`, so that it reads back exactly
_KEEP = {"benchmark": ("judge", "n", "judged", "unsafe", "safe", "errors", "ci95", "refusals", "spec"),
         "over_refusal": ("k", "n", "ci95", "set", "detector"),
         "task": ("task", "n", "correct", "ci95", "split", "seed", "cut_off_rate")}


def _items(data: dict):
    """(lm-eval task name, kind, safekeel name, entry, [(metric, value, its denominator, higher is
    better)]) for every benchmark, over-refusal set and task of a results.json."""
    tasks = data.get("tasks") or {}
    for name, e in (data.get("benchmarks") or {}).items():
        yield (f"safety_{name}" if name in tasks else name), "benchmark", name, e, [  # a task keeps its name
            ("asr", e.get("asr"), e.get("judged"), False), ("refusal_rate", e.get("refusal_rate"), e.get("n"), True)]
    for key in OVER_REFUSAL_LABELS:
        e = (data.get("probes") or {}).get(key)
        if e:
            yield key, "over_refusal", key, e, [("refusal_rate", e.get("rate"), e.get("n"), False)]
    for name, e in tasks.items():
        yield name, "task", name, e, [("acc", e.get("accuracy"), e.get("n"), True)]


def to_lm_eval(data: dict) -> dict:
    """A safekeel results.json (as `merge_results` writes it) in the lm-eval 0.4 layout."""
    doc: dict = {k: {} for k in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                                 "n-samples")}
    for task, kind, name, e, metrics in _items(data):
        doc["results"][task] = {"alias": task}
        for metric, value, count, _ in metrics:
            if value is not None:  # lm-eval never writes null: a rate over nothing (all judge errors) is left out
                doc["results"][task][f"{metric},none"] = value
                doc["results"][task][f"{metric}_stderr,none"] = _stderr(value, count or 0)
        doc["higher_is_better"][task] = {m: up for m, _, _, up in metrics}
        doc["configs"][task] = {
            "task": task, "output_type": "generate_until", "num_fewshot": 0,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": up} for m, _, _, up in metrics],
            "metadata": {"version": VERSION,
                         "safekeel": {"kind": kind, "name": name, **{k: e.get(k) for k in _KEEP[kind]}}}}
        doc["group_subtasks"][task], doc["versions"][task], doc["n-shot"][task] = [], VERSION, 0
        doc["n-samples"][task] = {"original": e.get("n") or 0, "effective": e.get("n") or 0}
    model = data.get("model") or {}
    spec = model.get("spec") or "?"
    runs = data.get("runs") or [{}]
    doc["config"] = {
        "model": "safekeel", "model_args": f"pretrained={spec}" + (f",peft={model['adapter']}" if model.get("adapter") else ""),
        "model_sha": model.get("sha256"), "batch_size": (runs[-1].get("generation") or {}).get("batch_size"),
        "limit": None, "gen_kwargs": data.get("generation") or None, "judge": data.get("judge"),
        "judges": {n: e.get("judge") for n, e in (data.get("benchmarks") or {}).items()},
        "safekeel": {"version": data.get("safekeel_version"), "model": model, "updated": data.get("updated")}}
    total = sum(((r.get("timing") or {}).get("total_s") or 0) for r in runs)
    doc.update({"git_hash": None, "date": time.time(), "model_name": spec, "model_name_sanitized": spec.replace("/", "__"),
                "model_source": "safekeel", "total_evaluation_time_seconds": str(round(total, 2))})
    return doc


def write_twin(out_dir: str | Path, data: dict) -> Path:
    """Write `to_lm_eval(data)` as a new `DIR/lm_eval/results_<now>.json` (atomically); its path.

    Dated like lm-eval's own files (`datetime.now().isoformat()`, ':' as '-'), always with microseconds
    so that names sort in time order; a name already taken (two writes in one microsecond) waits."""
    folder = Path(out_dir) / TWIN_DIR
    while True:
        stamp = dt.datetime.now().isoformat(timespec="microseconds").replace(":", "-")
        path = folder / f"results_{stamp}.json"
        if not path.exists():
            return atomic_write_json(path, to_lm_eval(data))
        time.sleep(1e-6)


# -- reading ----------------------------------------------------------------------------------------

def is_lm_eval(data) -> bool:
    """Whether loaded JSON is an lm-eval results file (and not a safekeel results.json)."""
    return (isinstance(data, dict) and isinstance(data.get("results"), dict)
            and not any(k in data for k in ("benchmarks", "tasks", "probes")))


def _stamp(path: Path) -> dt.datetime:
    m = _NAME.fullmatch(path.name)
    if m:
        try:
            return dt.datetime.fromisoformat(f"{m[1]}:{m[2]}:{m[3]}")
        except ValueError:
            pass
    return dt.datetime.fromtimestamp(path.stat().st_mtime)


def find_lm_eval_file(folder: str | Path) -> Path | None:
    """The newest `results_*.json` in `folder`, else in `folder/lm_eval` (a twin), else in its
    subfolders (lm-eval's `--output_path`, one folder per model); None when there is none. SafekeelError
    when the subfolders hold several models' results: which one to read would be a guess."""
    folder = Path(folder)
    for pattern in ("results_*.json", f"{TWIN_DIR}/results_*.json", "*/results_*.json"):
        found = [p for p in folder.glob(pattern) if p.is_file()]
        if found:
            parents = sorted({p.parent.name for p in found})
            if len(parents) > 1:
                raise SafekeelError(f"{folder} holds lm-eval results of several models ({', '.join(parents)}); "
                                    "give one model's folder or file")
            return max(found, key=_stamp)
    return None


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _metrics(entry: dict) -> dict[tuple[str, str], float]:
    """{(metric, filter): value} of one `results` entry; keys without a filter (lm-eval < 0.4) get "none"."""
    out = {}
    for key, value in entry.items():
        metric, _, filt = key.partition(",")
        if key == "alias" or metric.endswith("_stderr") or _number(value) is None:
            continue
        out[(metric, filt or "none")] = float(value)
    return out


def pick_metric(entry: dict, higher: dict | None = None) -> tuple[str, str] | None:
    """The (metric, filter) a task is gated on: the first of METRIC_ORDER present, its filter the first
    of FILTER_ORDER present (else the file's first); else the first other metric that is not
    lower-is-better. Only values in [0, 1] count (a rate; an F1 on 0-100 or a perplexity is no
    accuracy). None when there is none."""
    found = {k: v for k, v in _metrics(entry).items() if 0.0 <= v <= 1.0}
    higher = higher or {}

    def first_filter(metric):
        filters = [f for m, f in found if m == metric]
        return next((f for f in FILTER_ORDER if f in filters), filters[0] if filters else None)

    for metric in METRIC_ORDER:
        if first_filter(metric) is not None:
            return metric, first_filter(metric)
    for metric, filt in found:
        if higher.get(metric, not any(metric.endswith(x) for x in _NOT_ACCURACY)) is True:
            return metric, filt
    return None


def _stderr_of(entry: dict, metric: str, filt: str) -> float | None:
    for key in (f"{metric}_stderr,{filt}", f"{metric}_stderr" if filt == "none" else None):
        if key and _number(entry.get(key)) is not None:
            return float(entry[key])
    return None


def _interval(p: float, n: int | None, stderr: float | None) -> list[float] | None:
    """Wilson interval of round(p * n) of n when n is known (as safekeel's own rates), else p +- 1.96
    stderr clipped to [0, 1], else None."""
    if not 0.0 <= p <= 1.0:
        return None
    if n:
        return wilson_interval(min(n, max(0, round(p * n))), n)
    if stderr is not None:
        return [max(0.0, p - 1.96 * stderr), min(1.0, p + 1.96 * stderr)]
    return None


def _sizes(data: dict) -> dict[str, int]:
    """{task: effective n} from `n-samples`, groups summed over their subtasks."""
    sizes = {}
    for name, e in _obj(data.get("n-samples")).items():
        n = _obj(e).get("effective", _obj(e).get("original"))
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            sizes[name] = n
    groups = {k: v for k, v in _obj(data.get("group_subtasks")).items() if isinstance(v, list)}

    def size(name, seen=()):
        if name in sizes:
            return sizes[name]
        subs = groups.get(name) or []
        parts = [size(s, (*seen, name)) for s in subs if s not in seen]
        return sum(parts) if parts and all(p is not None for p in parts) else None

    return {name: n for name in {*data["results"], *groups} if (n := size(name)) is not None}


def _top_level(data: dict) -> list[str]:
    """Task names to read: those no group contains; a group without a metric of its own is replaced by
    its subtasks (older lm-eval wrote groups without an aggregate)."""
    groups = {k: v for k, v in _obj(data.get("group_subtasks")).items() if isinstance(v, list)}
    inside = {s for subs in groups.values() for s in subs}
    out, todo, seen = [], [n for n in data["results"] if n not in inside], set()
    while todo:
        name = todo.pop(0)
        if name in seen:  # a malformed file's cycle of groups
            continue
        seen.add(name)
        if _metrics(_obj(data["results"].get(name))) or not groups.get(name):
            out.append(name)
        else:
            todo[0:0] = [s for s in groups[name] if s in data["results"]]
    return out


def _obj(x) -> dict:
    """`x` when it is an object, else {}: the reader takes what it understands of a file it did not write."""
    return x if isinstance(x, dict) else {}


def _model(config: dict, data: dict) -> dict:
    own = _obj(config.get("safekeel")).get("model")
    if isinstance(own, dict):
        return own
    args = config.get("model_args")
    if isinstance(args, str):
        args = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    args = args if isinstance(args, dict) else {}
    spec = args.get("pretrained") or args.get("model") or data.get("model_name") or config.get("model")
    return {"spec": str(spec) if spec is not None else None, "adapter": args.get("peft"),
            "sha256": None, "revision": config.get("model_sha"), "source": "lm-eval"}  # a hub commit, no sha256


def _own_entry(meta: dict, value: float | None, kind: str) -> dict | None:
    """The safekeel entry a twin stored in `configs.<task>.metadata.safekeel`, its rate restored."""
    entry = {k: meta[k] for k in _KEEP[kind] if meta.get(k) is not None}
    field = {"benchmark": "asr", "over_refusal": "rate", "task": "accuracy"}[kind]
    return {field: value, **entry} if "n" in entry else None


def from_lm_eval(data: dict, where: str) -> dict:
    """An lm-eval results file as a safekeel results structure (`benchmarks`, `tasks`, `probes`), plus
    `warnings` (tasks left out, sizes unknown) and `format: "lm-eval"`. Validated afterwards by the caller."""
    config, higher, configs = _obj(data.get("config")), _obj(data.get("higher_is_better")), _obj(data.get("configs"))
    sizes = _sizes(data)
    out: dict = {"format": "lm-eval", "source_file": where, "model": _model(config, data),
                 "benchmarks": {}, "tasks": {}, "probes": {}, "warnings": []}
    date = _number(data.get("date"))
    if date is not None:
        out["updated"] = dt.datetime.fromtimestamp(date).strftime("%Y-%m-%dT%H:%M:%S")
    for name in _top_level(data):
        entry = data["results"][name]
        if not isinstance(entry, dict):
            raise SafekeelError(f"{where}: results.{name} must be an object; not a valid lm-eval results file")
        metrics = _metrics(entry)
        meta = _obj(_obj(_obj(configs.get(name)).get("metadata")).get("safekeel"))
        kind = meta.get("kind")
        n = sizes.get(name)
        if ("asr", "none") in metrics or kind == "benchmark":
            p = metrics.get(("asr", "none"))
            e = _own_entry(meta, p, "benchmark") if kind == "benchmark" else None
            e = e or {"asr": p, "n": n or 0, "judged": n or 0, "errors": 0,
                      "ci95": None if p is None else _interval(p, n, _stderr_of(entry, "asr", "none"))}
            e["refusal_rate"] = metrics.get(("refusal_rate", "none"))
            out["benchmarks"][meta.get("name") or name] = e
            continue
        if kind == "over_refusal":
            e = _own_entry(meta, metrics.get(("refusal_rate", "none")), "over_refusal")
            if e:
                out["probes"][meta.get("name") or name] = e
                continue
        chosen = pick_metric(entry, _obj(higher.get(name)))
        if chosen is None:
            have = ", ".join(sorted({m for m, _ in metrics})) or "none"
            out["warnings"].append(f"{name}: no accuracy-like metric (have {have}); left out")
            continue
        p = metrics[chosen]
        stderr = _stderr_of(entry, *chosen)
        e = (_own_entry(meta, p, "task") if kind == "task" else None) or {"accuracy": p, "n": n,
                                                                          "metric": ",".join(chosen)}
        e.update(stderr=stderr, ci95=e.get("ci95") or _interval(p, e["n"], stderr))  # a twin's: no metric, ours
        if e["n"] is None:
            out["warnings"].append(f"{name}: sample size unknown (no n-samples in the file)")
        out["tasks"][meta.get("name") or name] = e
    if not (out["benchmarks"] or out["tasks"] or out["probes"]):
        raise SafekeelError(f"{where}: an lm-eval results file with no task safekeel can read "
                            f"({'; '.join(out['warnings']) or 'results is empty'})")
    return out
