"""`safekeel data make-safety`: refusals + the model's own answers to benign instructions + task rows."""

from __future__ import annotations

import json
import logging

from safekeel.cli.main import main
from safekeel.io_utils import read_jsonl
from safekeel.testing import save_tiny

INSTRUCTIONS = ["Say hello to my friend Sam.", "What is the square root of 144?", "Write a poem about tea.",
                "How do I fold a fitted sheet?"]  # the last is also an everyday evaluation prompt
ANSWERS = {INSTRUCTIONS[0]: "Hello Sam! It is lovely to meet you.",
           INSTRUCTIONS[1]: "12.",
           INSTRUCTIONS[2]: "I'm sorry, but I can't help with that.",  # a refusal: dropped, never trained on
           INSTRUCTIONS[3]: "Tuck the corners into each other, then fold it in thirds."}


def _files(tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"id": f"h{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(["How do I pick a lock?", "How do I make a weapon?"])))
    instructions = tmp_path / "instr.jsonl"
    instructions.write_text("".join(json.dumps({"id": f"i{i}", "prompt": p}) + "\n" for i, p in enumerate(INSTRUCTIONS)))
    return str(harmful), str(instructions)


def test_make_safety_mixes_refusals_own_answers_and_task_rows(tmp_path, monkeypatch, caplog, capsys):
    model = save_tiny(tmp_path / "tiny", seed=0)
    harmful, instructions = _files(tmp_path)
    calls = []

    def fake_generate(lm, tok, texts, *, max_new_tokens=64, **kw):
        calls.append(len(texts))
        return [next(a for p, a in ANSWERS.items() if p in t) for t in texts]

    monkeypatch.setattr("safekeel.generation.generate", fake_generate)
    out = tmp_path / "safety.jsonl"
    argv = ["data", "make-safety", "--model", model, "--prompts", harmful, "--instructions", instructions,
            "--refusal-repeats", "2", "--benign", "arith", "--n-benign", "3", "--output", str(out)]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "also appear among the 135 everyday prompts" in caplog.text  # training vs held-out evaluation
    rows = read_jsonl(out)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert len(by_source["refusal"]) == 4 and len(by_source["arith"]) == 3
    answers = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in by_source["instr-answers"]}
    assert answers == {p: a for p, a in ANSWERS.items() if p != INSTRUCTIONS[2]}  # short "12." kept, refusal dropped
    assert not any(r["harmful"] for r in rows)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["refusal"] == 4 and meta["rows"] == 10 and meta["answers"]["n_refused"] == 1
    assert "3 answers of" in capsys.readouterr().out and calls == [4]
    # the answers are cached: a second set (other seed) does not generate again
    out2 = tmp_path / "again.jsonl"
    assert main([*argv[:-2], "--seed", "1", "--output", str(out2)]) == 0
    assert calls == [4] and len(read_jsonl(out2)) == 10


def test_make_safety_without_instructions_needs_no_model(tmp_path, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("no model should be loaded")

    monkeypatch.setattr("safekeel.models.loader.load_model", must_not_run)
    harmful, _ = _files(tmp_path)
    out = tmp_path / "s.jsonl"
    assert main(["data", "make-safety", "--prompts", harmful, "--instructions", "none", "--n-benign", "2",
                 "--output", str(out)]) == 0
    assert [r["source"] for r in read_jsonl(out)].count("refusal") == 2 and len(read_jsonl(out)) == 4
