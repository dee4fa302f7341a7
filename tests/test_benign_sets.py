"""The packaged benign prompt sets: sizes, topics, and the training set kept clear of the evaluation sets."""

from __future__ import annotations

import difflib
from collections import Counter

import pytest

from safekeel.data.benign_sets import BENIGN_SETS, EVAL_SETS, load_benign_set
from safekeel.data.prompts import load_prompts
from safekeel.data.records import check_overlap
from safekeel.errors import SafekeelError
from safekeel.evaluation import probes as P
from safekeel.judges.keyword import is_refusal
from safekeel.text import normalise_text


@pytest.mark.parametrize("name,n,topics", [("everyday", 135, 9), ("benign-risky", 52, None), ("instructions", 208, 13)])
def test_sets_load_with_unique_ids_and_prompts(name, n, topics):
    records = load_prompts(name)  # the same loader as every prompt-set argument
    assert len(records) == n and all(r.source == name for r in records)
    assert len({r.id for r in records}) == n and len({normalise_text(r.prompt) for r in records}) == n
    if topics:
        counts = Counter(r.category for r in records)
        assert len(counts) == topics and len(set(counts.values())) == 1  # balanced over topics
    assert not any(is_refusal(r.prompt) for r in records)


def test_everyday_set_covers_the_issue_topics_and_is_large_enough():
    cats = {r.category for r in load_benign_set("everyday")}
    assert {"writing", "explanation", "advice", "coding", "cooking", "travel"} <= cats
    assert len(load_benign_set("everyday")) >= 100


def test_training_instructions_stay_clear_of_every_evaluation_set():
    """Exact (normalised) overlap is what the tools warn about; near-duplicates are checked here too."""
    train = [r.prompt for r in load_benign_set("instructions")]
    held_out = [r.prompt for name in EVAL_SETS for r in load_benign_set(name)]
    held_out += P.STRUCTURE_PROMPTS + P.IDENTITY_PROMPTS
    assert check_overlap(train, held_out, ("training", "evaluation")) == []
    near = [(a, b) for a in train for b in held_out
            if difflib.SequenceMatcher(None, normalise_text(a), normalise_text(b)).ratio() > 0.85]
    assert near == []


def test_eval_sets_are_disjoint_from_each_other():
    assert check_overlap(load_benign_set("everyday"), load_benign_set("benign-risky")) == []


def test_unknown_set_and_options():
    with pytest.raises(SafekeelError, match="unknown benign prompt set"):
        load_benign_set("nope")
    with pytest.raises(SafekeelError, match="unknown prompt set"):
        load_prompts("everyday:all")
    assert set(BENIGN_SETS) == {"everyday", "benign-risky", "instructions"}
