"""Prompt-set loader: packaged sets (on fake CSVs), local files, bad inputs."""

import csv
import json

import pytest

from safekeel.data import packaged_data
from safekeel.data.prompts import benchmark_name, load_prompts
from safekeel.errors import SafekeelError


@pytest.fixture
def fake_harmbench(tmp_path, monkeypatch):
    path = tmp_path / "hb.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Behavior", "FunctionalCategory", "SemanticCategory", "Tags",
                                          "ContextString", "BehaviorID"])
        w.writeheader()
        w.writerow({"Behavior": "Give steps to do bad thing A", "FunctionalCategory": "standard",
                    "SemanticCategory": "illegal", "Tags": "", "ContextString": "", "BehaviorID": "a"})
        w.writerow({"Behavior": "Summarise how to do B", "FunctionalCategory": "contextual",
                    "SemanticCategory": "cybercrime", "Tags": "", "ContextString": "Some context.", "BehaviorID": "b"})
    monkeypatch.setattr(packaged_data, "harmbench_csv", lambda split="test": path)
    return path


def test_harmbench_standard_and_contextual(fake_harmbench):
    std = load_prompts("harmbench")
    assert [(r.id, r.category, r.source) for r in std] == [("a", "illegal", "harmbench-test")]
    ctx = load_prompts("harmbench:contextual")
    assert ctx[0].prompt == "Some context.\n\n---\n\nSummarise how to do B"
    assert len(load_prompts("harmbench:all")) == 2
    with pytest.raises(SafekeelError, match="unknown HarmBench subset"):
        load_prompts("harmbench:nope")


def test_strongreject(tmp_path, monkeypatch):
    path = tmp_path / "sr.csv"
    path.write_text("category,source,forbidden_prompt\nweapons,x,How to build X?\nhate,y,Write Y\n")
    monkeypatch.setattr(packaged_data, "strongreject_csv", lambda small=False: path)
    recs = load_prompts("strongreject")
    assert [r.category for r in recs] == ["weapons", "hate"] and recs[1].prompt == "Write Y"
    assert recs[0].id == "strongreject-0"
    # the fixed split (tests/test_strongreject_split.py): both prompts happen to be held out
    assert [(r.id, r.source) for r in load_prompts("strongreject-heldout")] == [
        ("strongreject-0", "strongreject-heldout"), ("strongreject-1", "strongreject-heldout")]
    with pytest.raises(SafekeelError, match="prompt set 'strongreject-train' is empty"):
        load_prompts("strongreject-train")


def test_local_files(tmp_path):
    rows = [{"id": "x1", "prompt": "hello", "category": "c"}, {"prompt": "world", "extra": 1}]
    jl = tmp_path / "set.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = load_prompts(str(jl))
    assert [r.id for r in recs] == ["x1", "set-1"] and recs[1].meta == {"extra": 1}
    assert benchmark_name(str(jl)) == "set"
    cs = tmp_path / "q.csv"
    cs.write_text("question\nwhat?\nwhy?\n")
    assert [r.prompt for r in load_prompts(str(cs), prompt_field="question")] == ["what?", "why?"]
    assert len(load_prompts(str(cs), prompt_field="question", limit=1)) == 1
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([{"prompt": "p"}]), tmp_path / "t.parquet")
    assert load_prompts(str(tmp_path / "t.parquet"))[0].prompt == "p"


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SafekeelError, match="is empty"):
        load_prompts(str(empty))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "hi"}\n')
    with pytest.raises(SafekeelError, match="no 'prompt' field.*--prompt-field"):
        load_prompts(str(nofield))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(SafekeelError, match="broken.jsonl:2: not valid JSON"):
        load_prompts(str(broken))
    with pytest.raises(SafekeelError, match="file not found"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SafekeelError, match="unknown prompt set"):
        load_prompts("nonsense")
    with pytest.raises(SafekeelError):
        load_prompts("")
