"""A 2-process CPU run (torchrun, gloo) gives the same losses as one process with the same global batch.

Each rank sees batch 1 of a 2-row dataset, one process sees batch 2; the loss is normalised by the answer
tokens of the whole global batch and DDP averages gradients, so step 1 (same weights) and step 2 (after
one update) must agree. PACT with the reference cache, so the cache pass runs under DDP too.
"""

import json

import pytest

from safekeel.testing import one_and_two_ranks, tiny_setup


def test_two_processes_match_one(tmp_path):
    setup = tiny_setup(tmp_path / "s", n_rows=2)
    a, b = one_and_two_ranks(
        {"model": setup["model"], "data": setup["data"], "tokens": setup["tokens"]}, tmp_path,
        {"max_steps": 2, "lora_dropout": 0.0, "learning_rate": 1e-2, "reference_cache": "on",
         "dataloader_num_workers": 0}, port=29561)
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(a) == sorted(b) == [1, 2]
    for step in (1, 2):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4), (step, a, b)
        assert b[step]["kl"] == pytest.approx(a[step]["kl"], rel=1e-3, abs=1e-6)
    assert a[2]["loss"] != pytest.approx(a[1]["loss"], rel=1e-4)  # the update did something
    meta = json.loads(next((tmp_path / "two" / "refcache").glob("*/meta.json")).read_text())
    assert meta["examples"] == 2
    assert json.loads((two / "safekeel_run.json").read_text())["distributed"]["world_size"] == 2
    assert json.loads((one / "safekeel_run.json").read_text())["distributed"]["world_size"] == 1
