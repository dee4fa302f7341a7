"""The structure of a results.json that `gate` and `compare` rely on, checked before either uses it.

`gate` is run by CI, which reads exit 1 as "the model regressed": a file whose ASR is a string must
not crash it into a traceback (exit 1), but fail as bad input with one line (exit 2). So every field
the two commands read is checked here for its type and range; fields they do not read are left alone,
so later versions may add fields freely.

Checked: the top level is an object with at least one of benchmarks / tasks / probes;
`model` (optional) an object whose `spec` and `adapter` are strings or null;
`benchmarks.<name>`: `asr` a rate or null, `n` and `errors` counts, `ci95` an interval or null, and
optionally `judged`, `unsafe`, `safe` counts and `judge` a string;
`tasks.<name>`: `accuracy` a rate or null, `n` a count (or null: unknown, an lm-eval file without
`n-samples`), `ci95`, and optionally `correct`;
`probes.over_refusal` and `probes.over_refusal_everyday` (optional): `rate` a rate or null, `ci95`,
`n` a count.
A rate is a finite number in [0, 1]; a count an integer >= 0 (not a boolean); an interval a list
[lo, hi] of rates with lo <= hi.
"""

from __future__ import annotations

import math

from safekeel.errors import SafekeelError

SECTIONS = ("benchmarks", "tasks", "probes")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(key) -> str:
    return key if isinstance(key, str) and key.isprintable() and "." not in key else repr(key)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_rate(x) -> bool:
    return _is_number(x) and 0.0 <= x <= 1.0


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_interval(x) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(_is_rate(v) for v in x) and x[0] <= x[1]


# kind -> (test, what the message says a field must be); None allowed where the kind ends in "?"
_KINDS = {
    "rate?": (lambda x: x is None or _is_rate(x), "a number in [0, 1] or null"),
    "count": (_is_count, "a non-negative integer"),
    "count?": (lambda x: x is None or _is_count(x), "a non-negative integer or null"),
    "interval?": (lambda x: x is None or _is_interval(x), "null or a list [lo, hi] with 0 <= lo <= hi <= 1"),
    "text?": (lambda x: x is None or isinstance(x, str), "a string or null"),
}

_BENCHMARK = {"asr": "rate?", "n": "count", "errors": "count", "ci95": "interval?"}
_BENCHMARK_OPTIONAL = {"judged": "count", "unsafe": "count", "safe": "count", "judge": "text?"}
_TASK = {"accuracy": "rate?", "n": "count?", "ci95": "interval?"}
_TASK_OPTIONAL = {"correct": "count"}
_OVER_REFUSAL = {"rate": "rate?", "n": "count", "ci95": "interval?"}


def _fail(where: str, path: str, message: str) -> SafekeelError:
    return SafekeelError(f"{where}: {path} {message}; not a valid safekeel results file")


def _object(value, where: str, path: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, path, f"must be an object, got {type(value).__name__} {_show(value)}")
    return value


def _fields(entry: dict, where: str, path: str, required: dict, optional: dict) -> None:
    for key, kind in [*required.items(), *optional.items()]:
        if key not in entry:
            if key in required:
                raise _fail(where, f"{path}.{key}", "is missing")
            continue
        test, what = _KINDS[kind]
        if not test(entry[key]):
            raise _fail(where, f"{path}.{key}", f"must be {what}, got {_show(entry[key])}")


def validate_results(data, where: str) -> dict:
    """`data` itself when it has the structure above; SafekeelError naming the first bad field otherwise."""
    if not isinstance(data, dict) or not any(k in data for k in SECTIONS):
        raise SafekeelError(f"{where} is not a safekeel results file (no benchmarks, tasks or probes)")
    if data.get("model") is not None:
        _fields(_object(data["model"], where, "model"), where, "model", {}, {"spec": "text?", "adapter": "text?"})
    for section, required, optional in (("benchmarks", _BENCHMARK, _BENCHMARK_OPTIONAL),
                                        ("tasks", _TASK, _TASK_OPTIONAL)):
        if section not in data:
            continue
        for key, entry in _object(data[section], where, section).items():
            path = f"{section}.{_name(key)}"
            _fields(_object(entry, where, path), where, path, required, optional)
        if section == "benchmarks":
            for key, entry in data[section].items():
                if entry["errors"] > entry["n"]:
                    raise _fail(where, f"benchmarks.{_name(key)}.errors", f"({entry['errors']}) exceeds n ({entry['n']})")
    if data.get("probes") is not None:
        probes = _object(data["probes"], where, "probes")
        from safekeel.evaluation.probes import OVER_REFUSAL_LABELS

        for key in OVER_REFUSAL_LABELS:
            if probes.get(key) is not None:
                _fields(_object(probes[key], where, f"probes.{key}"), where, f"probes.{key}", _OVER_REFUSAL, {})
    return data
