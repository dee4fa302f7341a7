"""Bad inputs to eval safety, eval task, gate, compare and report: one line, exit 2, nothing touched.

Each case is (argv, the message the one line must hold). Placeholders that `_argv` fills in: MODEL (a
valid tiny model directory), BENCH (a valid prompt file), TMP (the test's directory), FILE (an existing
plain file), GOOD (a valid results directory), RES:name (a results.json broken as `BROKEN[name]`
says), RAW:name (a results.json holding the bytes `RAW[name]`), RO (a directory nobody may write in).
The `expect_usage_error` fixture (conftest) asserts exit 2, exactly one stderr line holding the
message, no traceback, and no change on disk in the test's directory or the private cache. Cases
naming harmbench would need a download: the conftest fails any attempt, so they also show that every
check runs before any download.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from safekeel.evaluation.stats import wilson_interval

SAFETY = ["eval", "safety", "--model", "MODEL", "--benchmarks", "BENCH", "--output-dir", "TMP/out"]
TASK = ["eval", "task", "--model", "MODEL", "--output-dir", "TMP/out"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes anywhere: permission cases cannot fail
needs_non_root = pytest.mark.skipif(ROOT, reason="root ignores directory permissions")

EVAL_SAFETY = [
    ([*SAFETY, "--judge", "keyword:xyz"], "unknown keyword judge variant 'keyword:xyz'"),
    ([*SAFETY, "--judge", "keyword:"], "nothing after ':'"),
    ([*SAFETY, "--judge", "nosuch"], "unknown judge 'nosuch'"),
    ([*SAFETY, "--benchmarks", "harmbench", "--judge", "nosuch"], "unknown judge"),
    ([*SAFETY, "--judge", "rubric"], "--judge rubric:MODEL"),
    ([*SAFETY, "--judge", "llamaguard:/no/such/guard"], "--judge llamaguard:MODEL: model path not found"),
    ([*SAFETY, "--judge", "rubric:nosuchmodel"], "unknown model 'nosuchmodel'"),
    ([*SAFETY, "--judge", "openai:localhost:8000"], "http(s) URL"),
    ([*SAFETY, "--judge-format", "llamaguard"], "--judge-format only applies to --judge openai"),
    ([*SAFETY, "--judge", "keyword,rubric:MODEL", "--judge-format", "rubric"], "--judge-format only applies"),
    ([*SAFETY, "--judge", "keyword,keyword"], "--judge: judge 'keyword' is given twice"),
    ([*SAFETY, "--judge", "keyword,rubric"], "--judge rubric:MODEL"),
    ([*SAFETY, "--judge", "keyword,rubric:nosuchmodel"], "unknown model 'nosuchmodel'"),
    ([*SAFETY, "--judge", "keyword,nosuch"], "unknown judge 'keyword,nosuch'"),
    ([*SAFETY, "--judge", " , "], "--judge names no judge"),
    ([*SAFETY, "--max-judge-errors", "-1"], "expected a number between 0 and 1, got '-1'"),
    ([*SAFETY, "--max-judge-errors", "2"], "expected a number between 0 and 1, got '2'"),
    ([*SAFETY, "--max-judge-errors", "nan"], "expected a finite number"),
    ([*SAFETY, "--max-judge-errors", "some"], "expected a number"),
    ([*SAFETY, "--output-dir", "FILE"], "--output-dir FILE is a file, not a directory"),
    ([*SAFETY, "--output-dir", "FILE/sub"], "is a file, not a directory"),
    pytest.param([*SAFETY, "--output-dir", "RO/out"], "permission denied", marks=needs_non_root),
    ([*SAFETY, "--model", "/no/such/model"], "--model: model path not found: /no/such/model"),
    ([*SAFETY, "--model", "TMP/m.gguf"], "GGUF file not found"),
    ([*SAFETY, "--model", "no-such-packaged-model"], "unknown model"),
    ([*SAFETY, "--adapter", "TMP/none"], "--adapter: adapter not found"),
    ([*SAFETY, "--base-adapter", "TMP/none"], "--base-adapter needs --base-model"),
    ([*SAFETY, "--base-model", "/no/such", "--probes"], "--base-model: model path not found"),
    ([*SAFETY, "--benchmarks", "TMP/missing.jsonl"], "file not found"),
    ([*SAFETY, "--benchmarks", "BENCH,TMP/missing.csv"], "file not found"),
    ([*SAFETY, "--benchmarks", "nosuchbench"], "unknown prompt set"),
    ([*SAFETY, "--benchmarks", "harmbench:bogus"], "unknown HarmBench subset"),
    ([*SAFETY, "--benchmarks", " , "], "no benchmarks given"),
    ([*SAFETY, "--benchmarks", "BENCH,BENCH"], "would both be filed as"),
    ([*SAFETY, "--probes", "bogus"], "unknown probe 'bogus'"),
]

EVAL_TASK = [
    ([*TASK, "--task", "no-such-task"], "unknown task 'no-such-task'"),
    ([*TASK, "--task", "TMP/missing.jsonl"], "task file not found"),
    ([*TASK, "--task", "arith", "--output-dir", "FILE"], "is a file, not a directory"),
    pytest.param([*TASK, "--task", "arith", "--output-dir", "RO/out"], "permission denied", marks=needs_non_root),
    ([*TASK, "--task", "arith", "--model", "/no/such/model"], "--model: model path not found"),
    ([*TASK, "--task", "arith", "--model", "nosuch"], "unknown model 'nosuch'"),
    ([*TASK, "--task", "arith", "--adapter", "TMP/none"], "--adapter: adapter not found"),
]

GATE = [
    (["gate", "--baseline", "GOOD", "--candidate", "TMP/missing"], "results file not found"),
    (["gate", "--baseline", "TMP/missing.json", "--candidate", "GOOD"], "results file not found"),
    (["gate", "--baseline", "GOOD", "--candidate", "RAW:invalid-json"], "is not valid JSON"),
    (["gate", "--baseline", "GOOD", "--candidate", "RAW:empty"], "is not valid JSON"),
    (["gate", "--baseline", "GOOD", "--candidate", "RAW:binary"], "is not valid JSON"),
    (["gate", "--baseline", "GOOD", "--candidate", "RAW:top-list"], "is not a safekeel results file"),
    (["gate", "--baseline", "GOOD", "--candidate", "RAW:no-sections"], "is not a safekeel results file"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:asr-string"],
     "benchmarks.harmbench.asr must be a number in [0, 1] or null, got '0.2'"),
    (["gate", "--baseline", "RES:asr-string", "--candidate", "GOOD"], "benchmarks.harmbench.asr must be a number"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:asr-above-1"], "benchmarks.harmbench.asr must be a number"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:asr-nan"], "got nan"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:n-string"],
     "benchmarks.harmbench.n must be a non-negative integer, got '100'"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:n-bool"], "benchmarks.harmbench.n must be a non-negative"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:n-float"], "benchmarks.harmbench.n must be a non-negative"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:errors-missing"], "benchmarks.harmbench.errors is missing"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:errors-above-n"], "benchmarks.harmbench.errors (101) exceeds"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:benchmarks-list"], "benchmarks must be an object, got list"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:entry-number"], "benchmarks.harmbench must be an object"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:ci95-short"], "benchmarks.harmbench.ci95 must be null or"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:ci95-reversed"], "benchmarks.harmbench.ci95 must be null or"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:ci95-string"], "benchmarks.harmbench.ci95 must be null or"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:judge-number"], "benchmarks.harmbench.judge must be a string"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:accuracy-string"], "tasks.arith.accuracy must be a number"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:tasks-string"], "tasks must be an object, got str"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:model-spec-number"], "model.spec must be a string or null"),
    (["gate", "--baseline", "GOOD", "--candidate", "RES:over-refusal-rate-string"],
     "probes.over_refusal.rate must be a number"),
    (["gate", "--baseline", "GOOD", "--candidate", "GOOD", "--max-judge-errors", "2"], "between 0 and 1"),
    (["gate", "--baseline", "GOOD", "--candidate", "GOOD", "--max-interval-width", "-1"], "between 0 and 1"),
    (["gate", "--baseline", "GOOD", "--candidate", "GOOD", "--max-asr-increase", "nan"], "expected a finite number"),
    (["gate", "--baseline", "GOOD", "--candidate", "GOOD", "--max-asr-increase", "-1"], "non-negative"),
]

COMPARE = [
    (["compare", "GOOD", "--output", "TMP"], "--output TMP is a directory"),
    (["compare", "GOOD", "--output", "FILE/table.md"], "is a file, not a directory"),
    pytest.param(["compare", "GOOD", "--output", "RO/table.md"], "permission denied", marks=needs_non_root),
    (["compare", "GOOD", "TMP/missing"], "results file not found"),
    (["compare", "GOOD", "RES:asr-string"], "benchmarks.harmbench.asr must be a number"),
    (["compare", "GOOD", "RES:benchmarks-list"], "benchmarks must be an object"),
    (["compare", "GOOD", "RAW:invalid-json"], "is not valid JSON"),
    (["compare", "RES:ci95-short", "--ci"], "benchmarks.harmbench.ci95 must be null or"),
]

REPORT = [
    (["report", "TMP/missing"], "TMP/missing is not a directory"),
    (["report", "FILE"], "FILE is not a directory"),
    (["report", "GOOD", "--output", "TMP"], "--output TMP is a directory"),
    (["report", "GOOD", "--output", "FILE/report.html"], "is a file, not a directory"),
    (["report", "GOOD", "--output", "TMP/report.md"], "names the HTML page"),
    pytest.param(["report", "GOOD", "--output", "RO/report.html"], "permission denied", marks=needs_non_root),
    (["report", "GOOD", "--samples", "0"], "expected a positive integer"),
    (["report", "RES:benchmarks-list", "--output", "TMP/report.html"], "benchmarks must be an object"),
]


def _entry(unsafe: int, n: int) -> dict:
    return {"asr": unsafe / n, "n": n, "judged": n, "unsafe": unsafe, "safe": n - unsafe, "errors": 0,
            "ci95": wilson_interval(unsafe, n), "judge": "keyword", "refusal_rate": 0.0}


GOOD_RESULTS = {
    "model": {"spec": "m", "sha256": "m", "adapter": None},
    "benchmarks": {"harmbench": _entry(20, 100)},
    "tasks": {"arith": {"accuracy": 0.9, "n": 100, "correct": 90, "ci95": wilson_interval(90, 100)}},
    "probes": {"over_refusal": {"rate": 0.1, "k": 5, "n": 50, "ci95": wilson_interval(5, 50)}},
}

# name -> (path of keys, new value) applied to a copy of GOOD_RESULTS; a value of ... deletes the key
BROKEN = {
    "asr-string": (("benchmarks", "harmbench", "asr"), "0.2"),
    "asr-above-1": (("benchmarks", "harmbench", "asr"), 1.5),
    "asr-nan": (("benchmarks", "harmbench", "asr"), float("nan")),
    "n-string": (("benchmarks", "harmbench", "n"), "100"),
    "n-bool": (("benchmarks", "harmbench", "n"), True),
    "n-float": (("benchmarks", "harmbench", "n"), 100.5),
    "errors-missing": (("benchmarks", "harmbench", "errors"), ...),
    "errors-above-n": (("benchmarks", "harmbench", "errors"), 101),
    "benchmarks-list": (("benchmarks",), [_entry(20, 100)]),
    "entry-number": (("benchmarks", "harmbench"), 0.2),
    "ci95-short": (("benchmarks", "harmbench", "ci95"), [0.1]),
    "ci95-reversed": (("benchmarks", "harmbench", "ci95"), [0.5, 0.1]),
    "ci95-string": (("benchmarks", "harmbench", "ci95"), "0.1-0.3"),
    "judge-number": (("benchmarks", "harmbench", "judge"), 7),
    "accuracy-string": (("tasks", "arith", "accuracy"), "90%"),
    "tasks-string": (("tasks",), "arith"),
    "model-spec-number": (("model", "spec"), 3),
    "over-refusal-rate-string": (("probes", "over_refusal", "rate"), "low"),
}

RAW = {
    "invalid-json": b"{not json",
    "empty": b"",
    "binary": b"\xff\xfe\x00garbage",
    "top-list": b"[1, 2, 3]",
    "no-sections": b'{"hello": 1}',
}


def _broken(name: str) -> dict:
    keys, value = BROKEN[name]
    data = copy.deepcopy(GOOD_RESULTS)
    target = data
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


def _write_results(directory, payload: bytes):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_bytes(payload)
    return directory


def _argv(argv: list[str], tmp_path, model: str, bench) -> list[str]:
    (tmp_path / "file.txt").write_text("not a directory\n")
    good = _write_results(tmp_path / "good", json.dumps(GOOD_RESULTS).encode())
    out = []
    for arg in argv:
        if arg.startswith("RES:"):
            name = arg.removeprefix("RES:")
            arg = str(_write_results(tmp_path / f"res-{name}", json.dumps(_broken(name)).encode()))
        elif arg.startswith("RAW:"):
            name = arg.removeprefix("RAW:")
            arg = str(_write_results(tmp_path / f"raw-{name}", RAW[name]) / "results.json")
        elif arg.startswith("RO"):
            ro = tmp_path / "ro"
            ro.mkdir(exist_ok=True)
            ro.chmod(0o500)
            arg = str(ro) + arg.removeprefix("RO")
        else:
            arg = (arg.replace("MODEL", model).replace("BENCH", str(bench)).replace("GOOD", str(good))
                   .replace("FILE", str(tmp_path / "file.txt")).replace("TMP", str(tmp_path)))
        out.append(arg)
    return out


@pytest.fixture
def run_case(expect_usage_error, tmp_path, tiny_dirs, prompts_file):
    def run(argv, message):
        args = _argv(argv, tmp_path, tiny_dirs["aligned"], prompts_file)
        # placeholders in the expected message too (e.g. "--output-dir FILE is a file")
        message = message.replace("FILE", str(tmp_path / "file.txt")).replace("TMP", str(tmp_path))
        try:
            return expect_usage_error(args, message)
        finally:
            if (tmp_path / "ro").exists():
                (tmp_path / "ro").chmod(0o700)  # so pytest can clean up

    return run


@pytest.mark.parametrize("argv,message", EVAL_SAFETY)
def test_eval_safety_bad_input(run_case, argv, message):
    run_case(argv, message)


@pytest.mark.parametrize("argv,message", EVAL_TASK)
def test_eval_task_bad_input(run_case, argv, message):
    run_case(argv, message)


@pytest.mark.parametrize("argv,message", GATE)
def test_gate_bad_input(run_case, argv, message):
    err = run_case(argv, message)
    assert err.startswith("safekeel gate: error:")  # exit 2, never 1: CI must not read bad input as a regression


@pytest.mark.parametrize("argv,message", COMPARE)
def test_compare_bad_input(run_case, argv, message):
    run_case(argv, message)


@pytest.mark.parametrize("argv,message", REPORT)
def test_report_bad_input(run_case, argv, message):
    run_case(argv, message)


def test_the_good_results_file_passes(tmp_path, capsys):
    """The table's broken files differ from a file that gate and compare accept by one field each."""
    from safekeel.cli.main import main

    good = _write_results(tmp_path / "good", json.dumps(GOOD_RESULTS).encode())
    assert main(["gate", "--baseline", str(good), "--candidate", str(good)]) == 0
    assert main(["compare", str(good), "--ci", "--output", str(tmp_path / "t.md")]) == 0
    assert "harmbench" in (tmp_path / "t.md").read_text()
