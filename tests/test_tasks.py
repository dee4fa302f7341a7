"""Tasks: registry, reproducibility, train/test disjointness, worked solutions, answer extraction, hub and
local tasks (hub access is replaced by fake rows: no network in tests)."""

import json
import re
from typing import ClassVar

import pytest

from safekeel.errors import SafekeelError
from safekeel.tasks import OFFLINE_TASKS, TASKS, get_task
from safekeel.tasks.arith import canonical_number, extract_number
from safekeel.tasks.base import GeneratedTask
from safekeel.text import normalise_text


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_generated_tasks_are_seeded_and_reproducible(name):
    task = get_task(name)
    a = task.examples("train", 60, seed=0)
    assert task.name == name
    assert [e.to_dict() for e in a] == [e.to_dict() for e in get_task(name).examples("train", 60, seed=0)]
    assert [e.prompt for e in a[:20]] == [e.prompt for e in task.examples("train", 20, seed=0)]  # prefix-stable
    other = task.examples("train", 60, seed=1)
    assert len({e.prompt for e in a} & {e.prompt for e in other}) < 30  # another seed draws other examples
    assert len({e.id for e in a}) == 60 and len({normalise_text(e.prompt) for e in a}) == 60


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_train_and_test_never_share_a_prompt(name):
    task = get_task(name)
    train = {normalise_text(e.prompt) for seed in (0, 1, 2) for e in task.examples("train", 1500, seed=seed)}
    test = {normalise_text(e.prompt) for seed in (0, 7) for e in task.examples("test", 400, seed=seed)}
    assert len(test) >= 400 and len(train) >= 1500
    assert not train & test
    assert all(GeneratedTask.split_of(p) == "test" for p in list(test)[:50])


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_targets_are_graded_correct_and_labels_vary(name):
    task = get_task(name)
    examples = task.examples("test", 200, seed=3)
    assert all(task.is_correct(e.response, e) for e in examples)
    assert len({e.answer for e in examples}) > (20 if name == "arith" else 1)


def test_arith_worked_solutions_are_right():
    task = get_task("arith")
    for e in task.examples("train", 300, seed=5):
        assert e.response.endswith(f"The answer is {e.answer}.")
        assert int(e.answer) >= 0
        for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", e.response):
            assert eval(f"{a} {op} {b}") == int(c), e.response  # every step's arithmetic holds
        assert all(int(n) > 0 for n in re.findall(r"\d+", e.prompt))


def test_number_extraction():
    assert extract_number("so 3 + 4 = 7. The answer is 7.") == "7"
    assert extract_number("The answer is 5. Later we see 12 apples.") == "5"  # the marked number wins
    assert extract_number("work...\n#### 1,200") == "1200"
    assert extract_number("The final answer is: 72") == "72"
    assert extract_number("first 3 then 19.0") == "19"
    assert extract_number("no digits here") is None
    assert canonical_number("2.50") == "2.5" and canonical_number("x") is None
    task = get_task("arith")
    example = task.examples("test", 1)[0]
    assert task.is_correct(f"I think it is {example.answer}.", example)
    assert not task.is_correct(f"The answer is {int(example.answer) + 1}.", example)
    assert not task.is_correct("", example)


def test_label_extraction_takes_the_first_label_word():
    sentiment, topic = get_task("sentiment"), get_task("topic")
    assert sentiment.extract("Negative. It is not positive at all.") == "negative"
    assert sentiment.extract("POSITIVE") == "positive"
    assert sentiment.extract("I cannot say") is None
    assert topic.extract("This is about technology and business") == "Sci/Tech"
    assert topic.extract("sci/tech") == "Sci/Tech"
    assert topic.extract("Sports.") == "Sports"
    ex = topic.examples("test", 1)[0]
    wrong = next(label for label in topic.labels if label != ex.answer)
    assert not topic.is_correct(wrong, ex) and topic.is_correct(f"Category: {ex.answer}", ex)


def test_bad_arguments_are_user_errors():
    task = get_task("arith")
    with pytest.raises(SafekeelError, match="split"):
        task.examples("validation", 3)
    with pytest.raises(SafekeelError, match="positive"):
        task.examples("train", 0)
    with pytest.raises(SafekeelError, match="unknown task"):
        get_task("nope")
    with pytest.raises(SafekeelError, match="not found"):
        get_task("missing.jsonl")
    assert set(OFFLINE_TASKS) <= set(TASKS)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_local_task_modes_and_splits(tmp_path):
    nums = get_task(_write(tmp_path / "sums.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+5?", "answer": 7}]))
    assert nums.name == "sums" and nums.mode == "number"
    assert [e.answer for e in nums.examples("test")] == ["2", "7"]
    assert nums.is_correct("It is 7.0", nums.examples("test")[1])
    labels = get_task(_write(tmp_path / "lab.jsonl", [
        {"prompt": "a", "answer": "good", "split": "train"}, {"prompt": "b", "answer": "very good", "split": "test"},
        {"prompt": "c", "answer": "bad", "split": "test", "response": "It is bad."}]))
    assert labels.mode == "label"
    test = labels.examples("test")
    assert [e.prompt for e in test] == ["b", "c"] and test[1].response == "It is bad."
    assert labels.extract("Very good indeed, not bad") == "very good"
    assert labels.is_correct("Very good!", test[0]) and not labels.is_correct("good", test[0])
    assert [e.prompt for e in labels.examples("train")] == ["a"]
    free = get_task(_write(tmp_path / "free.jsonl", [{"prompt": "p", "answer": "Paris is the capital of France " + "x" * 40}]))
    assert free.mode == "exact"
    assert free.is_correct(free.examples("test")[0].answer.upper() + "!", free.examples("test")[0])
    with pytest.raises(SafekeelError, match="answer"):
        get_task(_write(tmp_path / "bad.jsonl", [{"prompt": "p"}]))


class _FakeHub:
    ROWS: ClassVar[dict] = {
        ("openai/gsm8k", "test"): [{"question": "Q1?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
                                   {"question": "Q2?", "answer": "so\n#### 1,024"}],
        ("stanfordnlp/sst2", "validation"): [{"sentence": "a gem ", "label": 1}, {"sentence": "dull", "label": 0}],
        ("fancyzhx/ag_news", "test"): [{"text": "Stocks rise", "label": 2}, {"text": "New chip", "label": 3}],
    }

    def __call__(self, repo, config=None, split="train", *, what=""):
        return [dict(r) for r in self.ROWS[(repo, split)]]


def test_hub_tasks_use_the_paper_formats(monkeypatch):
    monkeypatch.setattr("safekeel.rows.load_hub_rows", _FakeHub())
    gsm = get_task("gsm8k").examples("test")
    assert gsm[0].prompt == "Q1?" and gsm[0].answer == "7" and gsm[1].answer == "1024"
    assert gsm[0].response.endswith("The final answer is: 7")
    assert get_task("gsm8k").is_correct(gsm[1].response, gsm[1])
    sst = get_task("sst2").examples("test")
    assert sst[0].prompt == "Analyze the sentiment of the input, and respond only positive or negative a gem "
    assert [e.answer for e in sst] == ["positive", "negative"]
    ag = get_task("agnews").examples("test")
    assert ag[0].prompt.startswith("Categorize the news article given in the input into one of the 4 categories:\n\n"
                                   "World\nSports\nBusiness\nSci/Tech\n Stocks")
    assert [e.answer for e in ag] == ["Business", "Sci/Tech"]
    assert get_task("agnews").is_correct("tech", ag[1])
    assert [e.prompt for e in get_task("sst2").examples("test", 1)] == [sst[0].prompt]  # seed 0: hub order


def test_hub_tasks_fail_clearly_offline(monkeypatch):
    monkeypatch.setattr("safekeel.rows.hub_reachable", lambda: False)
    with pytest.raises(SafekeelError, match="unreachable.*|offline") as err:
        get_task("gsm8k").examples("test", 5)
    assert "arith" in str(err.value)

    def broken(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\nmore detail")

    monkeypatch.setattr("safekeel.rows.hub_reachable", lambda: True)
    monkeypatch.setattr("datasets.load_dataset", broken)
    with pytest.raises(SafekeelError, match="Couldn't reach") as err:
        get_task("sst2").examples("test", 5)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("response, number", [
    ("The answer is 113.", "113"),
    ("5 + 108 = 113", "113"),
    ("So she has **113** apples left.", "113"),
    ("Therefore, Lucas is \\(\\boxed{18}\\) years old.", "18"),
    ("\\[ \\boxed{1,200} \\]", "1200"),
    ("Answer: 113 apples, from 3 boxes", "113"),
    ("#### 42", "42"),
    ("The final answer is: $\\boxed{7}$", "7"),
    ("The answer is $2.50.", "2.5"),
    ("**Answer: 57**", "57"),
    ("The answer is \\( 42 \\).", "42"),
    ("The final answer is **17**. Hope that helps with your 2 questions", "17"),
    ("Step 1: 3*4=12. Step 2: 12+5=17", "17"),
    ("\\boxed{9} ... the answer is 10 (check: 2 steps)", "9"),  # boxed wins over a later marker
    ("no number here", None),
])
def test_extract_number_accepts_the_usual_answer_forms(response, number):
    assert extract_number(response) == number
