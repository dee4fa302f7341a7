"""`token_weighted` (seed 004, token-level safety weighting): the span and the weights against literal loops
(ragged rows, answers shorter than N, the first sentence), the schedule, weight 1 = SFT on the same
batches, user batches unweighted, two steps through the CLI and the logged stats."""

import json

import pytest
import torch

from safekeel.cli.main import main
from safekeel.defences import DataPlan, Defence, register_defence, unregister_defence
from safekeel.defences.base import StepState
from safekeel.defences.inputs import safety_rows
from safekeel.defences.token_weighted import (
    TokenWeighted,
    TokenWeightedOptions,
    span_mask,
    span_weights,
    token_tables,
)
from safekeel.errors import SafekeelError
from safekeel.testing import build_tokenizer, tiny_config, tiny_setup
from safekeel.training.run import train


def ragged(lengths, width, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab, (len(lengths), width), generator=g)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return torch.where(mask, targets, torch.full_like(targets, -100)), mask


def literal_span(targets, mask, n, words=None, ends=None):
    out = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        seen_word = stopped = False
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            tok = int(targets[b, t])
            if words is not None:
                seen_word = seen_word or bool(words[tok])
            out[b, t] = t < n and not stopped
            if words is not None and bool(ends[tok]) and seen_word:
                stopped = True  # the terminator itself is inside; everything after is not
    return out


@pytest.mark.parametrize("n", [1, 3, 5, 12])
def test_first_n_span_against_a_loop(n):
    targets, mask = ragged([0, 1, 3, 5, 9, 12], 12, 50)  # empty, shorter than N, longer
    span = span_mask(targets, mask, n)
    assert torch.equal(span, literal_span(targets, mask, n))
    assert span.sum(1).tolist() == [min(k, n) for k in [0, 1, 3, 5, 9, 12]]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [2, 6, 40])
def test_first_sentence_span_against_a_loop(seed, n):
    vocab = 12
    g = torch.Generator().manual_seed(100 + seed)
    words = torch.rand(vocab, generator=g) < 0.5
    ends = torch.rand(vocab, generator=g) < 0.3
    targets, mask = ragged([0, 2, 7, 15, 20, 20], 20, vocab, seed)
    span = span_mask(targets, mask, n, words, ends)
    assert torch.equal(span, literal_span(targets, mask, n, words, ends))
    assert not (span & ~mask).any()


def test_the_sentence_span_of_a_real_refusal():
    tok = build_tokenizer()
    words, ends = token_tables(tok)
    cases = {"I'm sorry, but I cannot help with that request. I will not explain.":
             "I'm sorry, but I cannot help with that request.",
             "\nSorry! Not this. Never.": "\nSorry!",  # a leading newline does not end a sentence
             "I cannot help with that": "I cannot help with that"}  # no terminator: the cap decides
    rows = [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for text in cases]
    width = max(map(len, rows))
    targets = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[t < len(r) for t in range(width)] for r in rows])
    span = span_mask(targets, mask, 64, words, ends)
    for row, ids, expected in zip(span, rows, cases.values()):
        got = tok.decode([i for i, inside in zip(ids, row.tolist()) if inside and i != tok.eos_token_id])
        assert got == expected
    assert bool(span[2, len(rows[2]) - 1])  # with no sentence end, the end-of-turn token is inside too
    assert not bool(span[0, len(rows[0]) - 1])
    short = span_mask(targets, mask, 3, words, ends)  # the cap
    assert short.sum(1).tolist() == [3, 3, 3]


def test_weights_against_a_loop_and_weight_one():
    targets, mask = ragged([2, 4, 7], 7, 30)
    span = span_mask(targets, mask, 3)
    w = span_weights(span, mask, 2.5)
    for b in range(3):
        for t in range(7):
            assert float(w[b, t]) == (0.0 if not mask[b, t] else 2.5 if t < 3 else 1.0)
    assert torch.equal(span_weights(span, mask, 1.0), mask.float())


def fake_step(source, targets, mask):
    ce = torch.rand(mask.shape) * mask
    batch = {"answer_targets": targets, "harmful": torch.zeros(mask.shape[0], dtype=torch.bool)}
    return StepState(batch=batch, logits=None, mask=mask, ce=ce, ft_k=None, ft_lse=None, safety_refs=None,
                     full_refs=None, source=source)


def test_loss_weights_only_safety_batches_and_logs_its_stats():
    d = TokenWeighted(TokenWeightedOptions.build({"token_weighted_span": "tokens", "token_weighted_weight": 3}))
    assert d.options.token_weighted_tokens == 5
    targets, mask = ragged([2, 6, 9], 9, 30)
    terms = d.loss(fake_step("safety", targets, mask))
    assert torch.equal(terms.token_weights, span_weights(literal_span(targets, mask, 5), mask, 3.0))
    s, c = terms.stats["tw_span"]
    assert s.tolist() == [2, 5, 5] and c.tolist() == [2, 6, 9]
    s, c = terms.stats["tw_weight"]
    assert s.tolist() == [6, 16, 19]  # 3·span + 1·rest
    # no safety rows in the batch: every weight 1, nothing in the span
    terms = d.loss(fake_step("main", targets, mask))
    assert torch.equal(terms.token_weights, mask.float())
    assert terms.stats["tw_span"][0].sum() == 0 and torch.equal(terms.stats["tw_weight"][0], mask.sum(1).float())


def test_options_are_checked():
    assert TokenWeightedOptions.build({}).token_weighted_tokens == 32
    assert TokenWeightedOptions.build({"token_weighted_tokens": 7}).token_weighted_tokens == 7
    for given, flag in [({"token_weighted_weight": 0.5}, "--token-weighted-weight"),
                        ({"token_weighted_tokens": 0}, "--token-weighted-tokens"),
                        ({"token_weighted_every": 1}, "--token-weighted-every"),
                        ({"token_weighted_span": "words"}, "--token-weighted-span")]:
        with pytest.raises(SafekeelError, match=flag):
            TokenWeightedOptions.build(given)


def test_the_schedule_interleaves_the_safety_rows():
    d = TokenWeighted(TokenWeightedOptions.build({"token_weighted_every": 4}))
    from types import SimpleNamespace

    ctx = SimpleNamespace(cache={"safety_rows": [{"id": "s"}]}, config=None)
    plan = d.data_plan(ctx)
    assert plan.sources == {"safety": [{"id": "s"}]}
    assert [plan.schedule(s) for s in range(9)] == ["safety", "main", "main", "main"] * 2 + ["safety"]


# -- training ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("token_weighted"))


def logged(out) -> dict:
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def test_two_steps_through_the_cli(setup, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--method", "token_weighted", "--model", setup["model"], "--dataset", setup["data"],
            "--safety-data", setup["safety"], "--output-dir", str(out), "--max-steps", "2", "--overlap-check",
            "none", "--disable-tqdm", "--logging-steps", "1", "--report-to", "none", "--token-weighted-weight", "4"]
    assert main(argv) == 0
    logs = logged(out)
    # step 1 trained on the refusals: "I'm sorry, but I cannot help with that request." + end of turn,
    # the span is the sentence (all but the end-of-turn token)
    assert 0.8 < logs[1]["tw_span"] < 1 and logs[1]["tw_weight"] == pytest.approx(1 + 3 * logs[1]["tw_span"])
    assert logs[2]["tw_span"] == 0 and logs[2]["tw_weight"] == 1  # the user's data: plain CE
    assert (out / "adapter_model.safetensors").is_file()
    run = json.loads((out / "safekeel_run.json").read_text())
    assert run["data"]["plan"] == {"main": 8, "safety": 6}


class SamePlanSFT(Defence):
    """Plain SFT on token_weighted's batches (its data plan, no weights)."""

    name = "same_plan_sft"
    summary = "test: sft with token_weighted's data plan"

    def data_plan(self, ctx):
        return DataPlan(sources={"safety": safety_rows(ctx)}, schedule=lambda step: "safety" if step % 2 == 0 else "main")


def test_weight_one_is_sft_on_the_same_batches(setup, tmp_path):
    common = {"tokens": None, "safety_data": setup["safety"], "max_steps": 3, "lora_dropout": 0.0}
    register_defence("same_plan_sft", SamePlanSFT)
    try:
        train(tiny_config(setup, tmp_path / "sft", method="same_plan_sft", **common), progress=False)
    finally:
        unregister_defence("same_plan_sft")
    for w in ("1", "3"):
        train(tiny_config(setup, tmp_path / w, method="token_weighted", token_weighted_weight=w,
                          token_weighted_every=2, **common), progress=False)
    sft, one, three = logged(tmp_path / "sft"), logged(tmp_path / "1"), logged(tmp_path / "3")
    for step in (1, 2, 3):
        assert one[step]["loss"] == pytest.approx(sft[step]["loss"], rel=1e-6)
    assert three[1]["loss"] > one[1]["loss"] * 1.5  # same weights at step 1: the span's CE counted 3 times
    assert three[1]["ce"] == pytest.approx(one[1]["ce"], rel=1e-6)  # the logged CE stays unweighted
