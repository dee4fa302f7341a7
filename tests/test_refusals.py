import random

import pytest

from safekeel.data.refusals import refusal_text, safety_sft_rows
from safekeel.errors import SafekeelError
from safekeel.judges.keyword import is_refusal


def test_refusals_are_refusals_and_varied():
    rng = random.Random(0)
    texts = {refusal_text(rng) for _ in range(50)}
    assert len(texts) > 10
    assert all(is_refusal(t) for t in texts)


def test_safety_sft_rows_mix_and_seed():
    benign = [{"id": f"b{i}", "source": "arith", "harmful": False,
               "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
              for i in range(3)]
    rows = safety_sft_rows(["bad one", "bad two"], benign, seed=1)
    assert len(rows) == 5 and sum(r["source"] == "refusal" for r in rows) == 2
    assert not any(r["harmful"] for r in rows)
    assert rows == safety_sft_rows(["bad one", "bad two"], benign, seed=1)
    refusal_rows = [r for r in rows if r["source"] == "refusal"]
    assert {r["messages"][0]["content"] for r in refusal_rows} == {"bad one", "bad two"}
    with pytest.raises(SafekeelError):
        safety_sft_rows([], benign)


def test_refusal_repeats_and_raw_benign_rows():
    helpful = [{"id": "h0", "prompt": "Say hi", "response": "Hi!", "source": "instructions-answers"}]
    rows = safety_sft_rows(["bad one", "bad two"], helpful, seed=0, refusal_repeats=3)
    refusals = [r for r in rows if r["source"] == "refusal"]
    assert len(refusals) == 6 and len({r["id"] for r in refusals}) == 6
    assert len({r["messages"][1]["content"] for r in refusals}) > 1  # a fresh refusal text per repeat
    (h,) = [r for r in rows if r["source"] == "instructions-answers"]
    assert h["messages"] == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    with pytest.raises(SafekeelError, match="repeats"):
        safety_sft_rows(["x"], [], refusal_repeats=0)
