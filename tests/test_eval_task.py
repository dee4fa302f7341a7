"""`eval task`: accuracy with a Wilson interval, samples, results.json, resume, the output-directory lock,
and the task interface (a fake task object, the generated tasks of `safekeel.tasks`, and a local
labelled file). Bad command lines are in test_bad_inputs_eval.py."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from safekeel.cli.main import main
from safekeel.errors import SafekeelError
from safekeel.evaluation.stats import wilson_interval
from safekeel.evaluation.task import TaskConfig, resolve_task, run_task_eval
from safekeel.io_utils import read_jsonl


@dataclass
class Example:
    id: str
    prompt: str
    answer: str


class FakeTask:
    """The interface `eval task` relies on: name, examples(split, n, seed), extract, is_correct."""

    name = "fakearith"

    def examples(self, split="test", n=None, seed=0):
        exs = [Example(f"q{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(6)]
        return exs[:n] if n else exs

    def extract(self, response):
        words = [w.strip(".") for w in response.split()]
        nums = [w for w in words if w.lstrip("-").isdigit()]
        return nums[-1] if nums else None

    def is_correct(self, response, example):
        return self.extract(response) == example.answer


class FakeGenerator:
    """Answers `i plus i makes 2i` for 'What is i + i?' (wrong for i = 5, none for i in `wrong`), or looks the
    answer up in `answers` (prompt -> text)."""

    backend = "hf"

    def __init__(self, wrong=(), sha="a" * 64, answers=None):
        self.fingerprint = {"spec": "fake", "kind": "local", "sha256": sha, "adapter": None, "adapter_sha256": None}
        self.max_new_tokens, self.batch_size, self.wrong, self.calls = 16, 4, set(wrong), 0
        self.answers = answers

    def format(self, prompt, system=None):
        return prompt

    def generate(self, texts):
        self.calls += 1
        if self.answers is not None:
            return [self.answers[t] for t in texts]
        out = []
        for t in texts:
            i = int(t.split()[2])
            out.append("I don't know" if i in self.wrong else f"{i} plus {i} makes {2 * i + (1 if i == 5 else 0)}")
        return out

    def close(self):
        pass


def test_run_task_eval_accuracy_and_samples(tmp_path):
    gen = FakeGenerator(wrong={1})
    res = run_task_eval(gen, FakeTask(), tmp_path, TaskConfig(progress=False))
    t = res["tasks"]["fakearith"]
    # q1 has no number (extraction failure), q5 is off by one: 4 of 6 correct
    assert (t["n"], t["correct"], t["extraction_failures"]) == (6, 4, 1)
    assert t["accuracy"] == pytest.approx(4 / 6) and t["ci95"] == pytest.approx(wilson_interval(4, 6))
    rows = read_jsonl(tmp_path / "samples_task_fakearith.jsonl")
    assert [r["correct"] for r in rows] == [True, False, True, True, True, False]
    assert rows[5]["extracted"] == "11" and rows[5]["answer"] == "10" and rows[1]["extracted"] is None
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"]["fakearith"]["accuracy"] == t["accuracy"] and on_disk["model"]["sha256"] == "a" * 64
    # resume: no generation; limit respected
    gen2 = FakeGenerator(wrong={1})
    res = run_task_eval(gen2, FakeTask(), tmp_path, TaskConfig(progress=False, limit=3))
    assert gen2.calls == 0 and res["tasks"]["fakearith"]["n"] == 3


@pytest.mark.parametrize("name", ["arith", "sentiment", "topic"])
def test_generated_tasks(tmp_path, name):
    task = resolve_task(name)
    examples = task.examples("test", n=8, seed=0)
    # correct answers for the first 6, a non-answer for the last 2
    answers = {e.prompt: (f"The answer is {e.answer}." if i < 6 else "I cannot tell.") for i, e in enumerate(examples)}
    res = run_task_eval(FakeGenerator(answers=answers), task, tmp_path, TaskConfig(limit=8, progress=False))
    t = res["tasks"][name]
    assert t["n"] == 8 and t["correct"] == 6 and t["accuracy"] == pytest.approx(0.75)
    assert t["extraction_failures"] == 2


def test_local_labelled_file_task(tmp_path):
    data = tmp_path / "labels.csv"
    data.write_text("prompt,answer\ngreat film,positive\nawful film,negative\nfine film,positive\n")
    task = resolve_task(str(data))
    answers = {"great film": "Positive.", "awful film": "It is positive", "fine film": "positive!"}
    res = run_task_eval(FakeGenerator(answers=answers), task, tmp_path / "r", TaskConfig(progress=False))
    assert res["tasks"]["labels"]["correct"] == 2 and res["tasks"]["labels"]["n"] == 3


def test_unknown_task_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SafekeelError):
        resolve_task("no-such-task-xyz")
    assert main(["eval", "task", "--model", "m", "--task", "no-such-task-xyz", "--output-dir", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_busy_output_directory_is_refused_before_generation(tmp_path):
    """While another run holds the directory (here a lock taken in this process, a separate open file),
    eval task stops before generating anything; once released, the same call runs."""
    from safekeel.locking import RunLock

    gen = FakeGenerator()
    with RunLock(tmp_path / "r", "eval task"):
        with pytest.raises(SafekeelError, match="is in use by another safekeel run .*eval task"):
            run_task_eval(gen, FakeTask(), tmp_path / "r", TaskConfig(progress=False))
        assert gen.calls == 0 and not (tmp_path / "r" / "results.json").exists()
    res = run_task_eval(gen, FakeTask(), tmp_path / "r", TaskConfig(progress=False))
    assert gen.calls == 2 and res["tasks"]["fakearith"]["n"] == 6 and res["tasks"]["fakearith"]["truncated"] == 0


def test_cli_busy_output_directory_is_one_line(tiny_dirs, tmp_path, capsys):
    from safekeel.locking import RunLock

    with RunLock(tmp_path / "r", "eval safety"):
        assert main(["eval", "task", "--model", tiny_dirs["aligned"], "--task", "arith", "--limit", "2",
                     "--output-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("safekeel eval: error:") and "in use by another safekeel run" in err
    assert len(err.splitlines()) == 1 and not list((tmp_path / "r").glob("samples_*"))


def test_task_and_safety_share_results(tmp_path):
    from safekeel.evaluation.safety import SafetyConfig, run_safety_eval
    from safekeel.judges import get_judge

    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"id": "x", "prompt": "What is 1 + 1?"}) + "\n")
    run_safety_eval(FakeGenerator(), get_judge("keyword"), tmp_path / "r", SafetyConfig([str(bench)], probes=[], progress=False))
    res = run_task_eval(FakeGenerator(), FakeTask(), tmp_path / "r", TaskConfig(progress=False))
    assert set(res["benchmarks"]) == {"b"} and set(res["tasks"]) == {"fakearith"} and len(res["runs"]) == 2
    from safekeel.evaluation.results import load_results

    assert load_results(tmp_path / "r") == res  # what eval writes passes the structure check of gate/compare


def test_cli_eval_task_on_tiny_model(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "prompt": p, "answer": a}) + "\n" for i, (p, a) in enumerate(
        [("Tom has 3 apples and buys 5 more. How many?", "8"), ("0 1 2 3 ?", "4")])))
    out = tmp_path / "run"
    assert main(["eval", "task", "--model", tiny_dirs["aligned"], "--task", str(data), "--max-new-tokens", "4",
                 "--output-dir", str(out), "--no-progress"]) == 0
    assert "sums" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    t = res["tasks"]["sums"]
    rows = read_jsonl(out / "samples_task_sums.jsonl")
    task = resolve_task(str(data))
    assert t["n"] == 2 and t["correct"] == sum(r["correct"] for r in rows)
    assert all(r["extracted"] == task.extract(r["response"]) for r in rows)
    assert res["model"]["kind"] == "local" and res["runs"][-1]["arguments"]["task"] == str(data)


class CutOffGenerator(FakeGenerator):
    """Like FakeGenerator, but says which answers the token budget stopped (`Answers.cut_off`): those
    to prompts with an even i, whose text is also cut before the final number."""

    def generate(self, texts):
        from safekeel.generation import Answers

        self.calls += 1
        out, stopped = [], set()
        for j, t in enumerate(texts):
            i = int(t.split()[2])
            if i % 2 == 0:
                out.append(f"First, {i} plus")
                stopped.add(j)
            else:
                out.append(f"{i} plus {i} makes {2 * i}")
        return Answers(out, cut_off=stopped)


def test_cut_off_share_and_accuracy_of_finished_answers(tmp_path):
    res = run_task_eval(CutOffGenerator(), FakeTask(), tmp_path, TaskConfig(progress=False))
    t = res["tasks"]["fakearith"]
    # q0, q2, q4 cut off (q0's "0" happens to be right: "First, 0 plus" ends in 0); q1, q3, q5 finished and right
    assert (t["cut_off"], t["cut_off_known"], t["cut_off_rate"]) == (3, 6, 0.5)
    assert t["correct"] == 4 and t["accuracy_finished"] == 1.0
    rows = read_jsonl(tmp_path / "samples_task_fakearith.jsonl")
    assert [r["cut_off"] for r in rows] == [True, False, True, False, True, False]
    # a generator that does not say: the share is unknown, not zero
    res = run_task_eval(FakeGenerator(), FakeTask(), tmp_path / "plain", TaskConfig(progress=False))
    t = res["tasks"]["fakearith"]
    assert t["cut_off_known"] == 0 and t["cut_off_rate"] is None and t["accuracy_finished"] is None


def test_task_chooses_answer_length_and_cli_warns_on_cut_off(tiny_dirs, tmp_path, capsys):
    assert resolve_task("arith").max_new_tokens == 512 and resolve_task("sentiment").max_new_tokens == 64
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3)))
    assert resolve_task(str(data)).max_new_tokens == 512
    out = tmp_path / "run"
    assert main(["eval", "task", "--model", tiny_dirs["aligned"], "--task", str(data), "--max-new-tokens", "3",
                 "--output-dir", str(out), "--no-progress"]) == 0
    t = json.loads((out / "results.json").read_text())["tasks"]["sums"]
    rows = read_jsonl(out / "samples_task_sums.jsonl")
    assert t["cut_off_known"] == 3 and t["cut_off"] == sum(r["cut_off"] for r in rows)
    if t["cut_off"]:  # a random model rarely ends its answer within 3 tokens
        assert f"{t['cut_off']} of 3 answers used all 3 new tokens" in capsys.readouterr().err
