"""Training data loading: every accepted layout normalises to {"id", "messages", "harmful", "source"}, and
malformed data fails with one clear SafekeelError."""

import csv
import json

import pytest

from safekeel.cli.main import main
from safekeel.data.records import normalise_rows, row_prompt
from safekeel.data.training_data import load_training_data
from safekeel.errors import SafekeelError
from safekeel.tasks import get_task

KEYS = {"id", "messages", "harmful", "source"}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_messages_and_prompt_response_rows(tmp_path):
    rows = load_training_data(_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}], "id": "a"},
        {"prompt": "2+2?", "response": "4", "harmful": "true"},
        {"instruction": "Classify", "input": "great film", "output": "positive"},
        {"question": "Capital of France?", "completion": "Paris", "source": "geo"},
    ]))
    assert all(set(r) >= KEYS for r in rows)
    assert rows[0]["id"] == "a" and [t["role"] for t in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[1]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert rows[1]["harmful"] is True and rows[0]["harmful"] is False
    assert row_prompt(rows[2]) == "Classify great film"  # the authors' instruction + " " + input
    assert rows[3]["source"] == "geo" and rows[0]["source"] == "chat" and rows[1]["id"] == "chat-1"


def test_csv_and_parquet_and_system_prompt(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["messages", "harmful"])
        w.writeheader()
        w.writerow({"messages": json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
                    "harmful": "0"})
    rows = load_training_data(str(path), system="SYS")
    assert rows[0]["messages"][0] == {"role": "system", "content": "SYS"} and rows[0]["harmful"] is False
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]),
                   tmp_path / "d.parquet")
    rows = load_training_data(str(tmp_path / "d.parquet"), n=1)
    assert len(rows) == 1 and rows[0]["messages"][1]["content"] == "r1"


@pytest.mark.parametrize("row, match", [
    ({"text": "no known fields"}, "no `messages` and no a prompt.*fields: text"),
    ({"prompt": "only a prompt"}, "a response"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}, "empty"),
    ({"messages": "not json"}, "JSON"),
    ({"messages": [{"role": "user"}]}, "role` and `content"),
    ({"prompt": "p", "response": "r", "harmful": "maybe"}, "true or false"),
])
def test_malformed_rows_are_clear_errors(tmp_path, row, match):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine", "response": "ok"}, row])
    with pytest.raises(SafekeelError, match=match) as err:
        load_training_data(path)
    assert "row 2" in str(err.value)


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SafekeelError, match="empty"):
        load_training_data(str(tmp_path / "empty.jsonl"))
    with pytest.raises(SafekeelError, match="not found"):
        load_training_data(str(tmp_path / "nope.jsonl"))
    with pytest.raises(SafekeelError, match="unknown training data"):
        load_training_data("nonsense")
    with pytest.raises(SafekeelError, match="empty"):
        normalise_rows([], "x")


def test_task_names_give_their_train_split():
    rows = load_training_data("arith", n=25, seed=2)
    examples = get_task("arith").examples("train", 25, seed=2)
    assert len(rows) == 25 and not any(r["harmful"] for r in rows)
    assert [r["messages"][-1]["content"] for r in rows] == [e.response for e in examples]
    assert {r["source"] for r in rows} == {"arith"}


def test_hub_and_harmful_set_specs(monkeypatch):
    calls = []

    def fake_hub(repo, config=None, split="train", *, what=""):
        calls.append((repo, split))
        return [{"prompt": "hub q", "response": "hub a"}]

    monkeypatch.setattr("safekeel.rows.load_hub_rows", fake_hub)
    rows = load_training_data("hf:someone/data:dev")
    assert calls == [("someone/data", "dev")] and rows[0]["source"] == "someone_data"
    # a harmful set trains a de-aligned counterpart (`safekeel train --method sft --dataset strongreject-harmful`)
    monkeypatch.setattr("safekeel.data.harmful.load_harmful",
                        lambda spec, limit=None: [{"prompt": "bad q", "response": "Sure, here is"}])
    rows = load_training_data("strongreject-harmful")
    assert rows[0]["harmful"] is True and rows[0]["source"] == "strongreject-harmful"


def test_make_task_cli_writes_loadable_messages(tmp_path, capsys):
    out = tmp_path / "topic.jsonl"
    assert main(["data", "make-task", "--task", "topic", "--split", "test", "--n", "12", "--seed", "4",
                 "--output", str(out)]) == 0
    rows = load_training_data(str(out))
    examples = get_task("topic").examples("test", 12, seed=4)
    assert [r["messages"][0]["content"] for r in rows] == [e.prompt for e in examples]
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == [e.answer for e in examples]
    assert "12 topic test examples" in capsys.readouterr().out
    assert main(["data", "make-task", "--task", "nope", "--output", str(out)]) == 2
