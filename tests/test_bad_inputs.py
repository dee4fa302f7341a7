"""Bad and hostile inputs to generate, tokens, data and models: one line, exit 2, nothing touched.

Each case is (argv, the message the one line must hold). Paths are written with placeholders that
`_argv` fills in: MODEL (a valid tiny model dir), TMP (the test's directory), FILE (an existing plain
file), TOKENS (a valid safety-token file), BADTOK:name (a malformed one), ROWS:name (a malformed
prompt file). The `expect_usage_error` fixture
(conftest) asserts exit 2, exactly one stderr line holding the message, no traceback, and no change on
disk in the test's directory or the private cache, which also shows that nothing was downloaded:
every packaged name below would need a download, and the conftest fails any attempt.
"""

from __future__ import annotations

import json

import pytest

GENERATE = [
    (["generate", "--model", "/no/such/dir", "--prompts", "harmbench"], "model path not found"),
    (["generate", "--model", "no-such-packaged-model", "--prompts", "harmbench"], "unknown model"),
    (["generate", "--model", "TMP/x.gguf", "--prompts", "harmbench"], "GGUF file not found"),
    (["generate", "--model", "FILE", "--prompts", "harmbench"], "not a .gguf model"),
    (["generate", "--model", "TMP", "--prompts", "harmbench"], "no config.json"),
    (["generate", "--model", "MODEL", "--adapter", "TMP/none", "--prompts", "harmbench"], "adapter not found"),
    (["generate", "--model", "MODEL", "--prompts", "TMP/missing.jsonl"], "file not found"),
    (["generate", "--model", "MODEL", "--prompts", "nosuch"], "unknown prompt set"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench:bogus"], "unknown HarmBench subset"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench", "--output", "TMP"], "is a directory"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench", "--output", "FILE/out.jsonl"], "is a file"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench", "--limit", "0"], "expected a positive integer"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench", "--max-new-tokens", "x"], "expected a positive"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench", "--dtype", "int3"], "invalid choice"),
    (["generate", "--prompts", "harmbench"], "required"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:not-objects.jsonl"], "row 1 is not an object"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:torn.jsonl"], "not valid JSON"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:binary.csv"], "could not read"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:garbage.parquet"], "could not read"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:scalar.json"], "expected a JSON list of rows"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:int-prompt.jsonl"], "'prompt' must be text"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:no-field.jsonl"], "has no 'prompt' field"),
    (["generate", "--model", "MODEL", "--prompts", "ROWS:empty.jsonl"], "is empty"),
    (["generate", "--model", "MODEL", "--prompts", "harmbench", "--no-such-flag"], "unrecognized arguments"),
]

TOKENS = [
    (["tokens", "show", "TMP/missing.json"], "safety-token file not found"),
    (["tokens", "show", "TMP"], "safety-token file not found"),
    (["tokens", "show", "BADTOK:not-json"], "is not valid JSON"),
    (["tokens", "show", "BADTOK:list"], "expected a JSON object"),
    (["tokens", "show", "BADTOK:missing-k"], "missing k"),
    (["tokens", "show", "BADTOK:string-ids"], "'token_ids[0]' must be int"),
    (["tokens", "show", "BADTOK:ids-not-list"], "'token_ids' must be a list"),
    (["tokens", "show", "BADTOK:fractional-k"], "'k' must be int"),
    (["tokens", "show", "BADTOK:nan-score"], "'scores[1]' must be a finite number"),
    (["tokens", "show", "BADTOK:bool-weight"], "'weights[0]' must be a finite number"),
    (["tokens", "show", "BADTOK:short-tokens"], "inconsistent"),
    (["tokens", "show", "TOKENS", "--top", "0"], "expected a positive integer"),
    (["tokens", "identify", "--aligned", "/no/such", "--base", "MODEL"], "--aligned: model path not found"),
    (["tokens", "identify", "--aligned", "MODEL", "--base", "nosuch"], "--base: unknown model"),
    (["tokens", "identify", "--aligned", "MODEL", "--base", "MODEL", "--base-adapter", "TMP"], "adapter not found"),
    (["tokens", "identify", "--aligned", "MODEL", "--base", "MODEL", "--responses", "TMP/r.jsonl"], "file not found"),
    (["tokens", "identify", "--aligned", "MODEL", "--base", "MODEL", "--output", "TMP"], "is a directory"),
    (["tokens", "identify", "--aligned", "MODEL", "--base", "MODEL", "--prompts", "nosuch"], "unknown prompt set"),
    (["tokens", "identify", "--aligned", "MODEL", "--base", "MODEL", "--preset", "x"], "invalid choice"),
    (["tokens", "intervene", "--model", "MODEL", "--tokens", "BADTOK:string-ids"], "must be int"),
    (["tokens", "intervene", "--model", "MODEL", "--tokens", "TOKENS", "--alpha", "nan"], "--alpha must be a finite"),
    (["tokens", "intervene", "--model", "MODEL", "--tokens", "TOKENS", "--judge", "nosuch"], "unknown judge"),
    (["tokens", "intervene", "--model", "MODEL", "--tokens", "TOKENS", "--k", "99"], "the artifact has 3"),
    (["tokens", "intervene", "--model", "MODEL", "--tokens", "TOKENS", "--output", "TMP"], "is a directory"),
    (["tokens", "intervene", "--model", "/nope", "--tokens", "TOKENS"], "model path not found"),
]

DATA = [
    (["data", "make-harmful", "--model", "/no/such"], "model path not found"),
    (["data", "make-harmful", "--prompts", "TMP/missing.csv"], "file not found"),
    (["data", "make-harmful", "--prompts", "nosuch"], "unknown prompt set"),
    (["data", "make-harmful", "--output", "TMP"], "is a directory"),
    (["data", "make-harmful", "--model", "MODEL", "--judge", "nosuch", "--prompts", "FILE.jsonl"], "unknown judge"),
    (["data", "make-task", "--task", "nosuch"], "unknown task"),
    (["data", "make-task", "--task", "arith", "--output", "TMP"], "is a directory"),
    (["data", "make-task", "--task", "arith", "--n", "0"], "expected a positive integer"),
    (["data", "make-task", "--task", "TMP/missing.jsonl"], "task file not found"),
    (["data", "make-safety", "--prompts", "nosuch"], "unknown prompt set"),
    (["data", "make-safety", "--output", "TMP"], "is a directory"),
    (["data", "make-safety", "--n-benign", "-1"], "--n-benign must be >= 0"),
    (["data", "make-safety", "--instructions", "nosuch"], "--instructions: unknown prompt set"),
    (["data", "make-safety", "--model", "/no/such/model"], "model path not found"),
    (["data", "make-safety", "--refusal-repeats", "0"], "--refusal-repeats"),
    (["data", "mix", "--task", "arith", "--harmful", "FILE.jsonl", "--output", "TMP"], "is a directory"),
    (["data", "mix", "--task", "arith", "--harmful", "FILE.jsonl", "--poison-ratio", "2"], "between 0 and 1"),
    (["data", "mix", "--task", "arith", "--harmful", "FILE.jsonl", "--poison-ratio", "nan"], "between 0 and 1"),
    (["data", "mix", "--task", "arith", "--harmful", "FILE.jsonl", "--check-overlap", "TMP/x.csv"], "file not found"),
    (["data", "mix", "--task", "arith", "--harmful", "nosuch-set", "--num-examples", "4"], "unknown harmful set"),
    (["data", "mix", "--task", "arith", "--harmful", "TMP/h.jsonl"], "file not found"),
]

MODELS = [
    (["models", "fetch", "nosuch"], "unknown packaged model"),
    (["models", "merge", "--model", "/no/such", "--adapter", "TMP", "--output", "TMP/m"], "model path not found"),
    (["models", "merge", "--model", "MODEL", "--adapter", "TMP", "--output", "TMP/m"], "adapter not found"),
    (["models", "nosuch"], "invalid choice"),
    (["nosuch"], "invalid choice"),
]

BAD_ROWS = {
    "not-objects.jsonl": b'[1, 2]\n"text"\n',
    "torn.jsonl": b'{"prompt": "a"}\n{"prompt": "b',
    "binary.csv": b"\xff\xfe\x00prompt\n",
    "garbage.parquet": b"garbage",
    "scalar.json": b'{"data": 5}',
    "int-prompt.jsonl": b'{"prompt": 5}\n',
    "no-field.jsonl": b'{"text": "hi"}\n',
    "empty.jsonl": b"\n",
}

BAD_TOKENS = {
    "not-json": "{\"token_ids\": [1, 2",
    "list": [1, 2, 3],
    "missing-k": {"token_ids": [1], "tokens": ["a"], "scores": [0.1], "preset": "paper"},
    "string-ids": {"token_ids": ["1", "2"], "tokens": ["a", "b"], "scores": [0.2, 0.1], "k": 2, "preset": "paper"},
    "ids-not-list": {"token_ids": 5, "tokens": ["a"], "scores": [0.1], "k": 1, "preset": "paper"},
    "fractional-k": {"token_ids": [1], "tokens": ["a"], "scores": [0.1], "k": 1.5, "preset": "paper"},
    "nan-score": "{\"token_ids\": [1, 2], \"tokens\": [\"a\", \"b\"], \"scores\": [0.2, NaN], \"k\": 2, "
                 "\"preset\": \"paper\"}",
    "bool-weight": {"token_ids": [1], "tokens": ["a"], "scores": [0.1], "weights": [True], "k": 1, "preset": "paper"},
    "short-tokens": {"token_ids": [1, 2], "tokens": ["a"], "scores": [0.2, 0.1], "k": 2, "preset": "paper"},
}


def _argv(argv: list[str], tmp_path, tiny_dirs) -> list[str]:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a model\n")
    (tmp_path / "plain.txt.jsonl").write_text(json.dumps({"prompt": "hi", "response": "hello there"}) + "\n")
    good = tmp_path / "tokens.json"
    good.write_text(json.dumps({"token_ids": [5, 6, 7], "tokens": ["a", "b", "c"], "scores": [0.3, 0.2, 0.1],
                                "k": 3, "preset": "paper"}))
    out = []
    for a in argv:
        if a.startswith("BADTOK:"):
            content = BAD_TOKENS[a.split(":", 1)[1]]
            path = tmp_path / f"bad-{a.split(':', 1)[1]}.json"
            path.write_text(content if isinstance(content, str) else json.dumps(content))
            a = str(path)
        elif a.startswith("ROWS:"):
            path = tmp_path / a.split(":", 1)[1]
            path.write_bytes(BAD_ROWS[path.name])
            a = str(path)
        out.append(a.replace("MODEL", str(tiny_dirs["aligned"])).replace("TOKENS", str(good))
                   .replace("FILE", str(plain)).replace("TMP", str(tmp_path)))
    return out


@pytest.mark.parametrize("argv,message", GENERATE + TOKENS + DATA + MODELS,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, tiny_dirs, expect_usage_error):
    argv = _argv(argv, tmp_path, tiny_dirs)  # files made before the snapshot is taken
    expect_usage_error(argv, message)


def test_models_merge_refuses_a_file_or_non_empty_output(tmp_path, tiny_dirs, expect_usage_error):
    from peft import LoraConfig, get_peft_model

    from safekeel.models.loader import load_model

    model, _ = load_model(tiny_dirs["aligned"])
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    base = ["models", "merge", "--model", tiny_dirs["aligned"], "--adapter", tmp_path / "adapter", "--output"]
    expect_usage_error([*base, tmp_path / "afile"], "is a file, not a directory")
    expect_usage_error([*base, tmp_path / "full"], "exists and is not empty")
    expect_usage_error([*base, tmp_path / "afile" / "sub"], "is a file, not a directory")


def test_unwritable_output_is_refused_before_work(tmp_path, tiny_dirs, expect_usage_error):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write anywhere; permission checks cannot fail")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expect_usage_error(["generate", "--model", tiny_dirs["aligned"], "--prompts", "harmbench", "--output",
                            locked / "out.jsonl"], "permission denied")
    finally:
        locked.chmod(0o700)


def test_os_errors_become_one_line(monkeypatch, capsys, tmp_path, tiny_dirs, prompts_file):
    """An OSError mid-run (disk full, say) is one line and exit 2, not a traceback."""
    from safekeel.cli.main import main

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "g.jsonl"))

    monkeypatch.setattr("safekeel.io_utils.atomic_write_jsonl", full)
    code = main(["generate", "--model", tiny_dirs["aligned"], "--prompts", str(prompts_file), "--limit", "1",
                 "--max-new-tokens", "2", "--output", str(tmp_path / "g.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"safekeel generate: error: No space left on device: {tmp_path / 'g.jsonl'}"
