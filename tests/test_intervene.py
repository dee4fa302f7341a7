"""Logit interventions (paper §2.2) on a tiny model."""

import torch

from safekeel.chat import format_prompt
from safekeel.data.prompts import PromptRecord
from safekeel.generation import TokenBias, generate
from safekeel.judges import get_judge
from safekeel.tokens.intervene import random_control_tokens, run_interventions


def test_token_bias_boost_and_suppress():
    scores = torch.zeros(2, 6)
    out = TokenBias([1, 3], 5.0)(None, scores)
    assert out[:, 1].eq(5).all() and out[:, 3].eq(5).all() and out[:, 0].eq(0).all()
    out = TokenBias([1], -1e9)(None, scores)
    assert out[:, 1].lt(-1e30).all()
    assert scores.eq(0).all()  # input untouched


def test_boost_forces_and_suppress_removes_tokens(tiny_pair, tokenizer):
    model, _ = tiny_pair
    text = [format_prompt(tokenizer, "hello")]
    target = tokenizer.convert_tokens_to_ids("ĠI")
    boosted = generate(model, tokenizer, text, max_new_tokens=4, logits_processors=[TokenBias([target], 100.0)],
                       progress=False)[0]
    assert boosted.startswith("I I")
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    n = enc.input_ids.shape[1]
    plain = model.generate(**enc, max_new_tokens=8, do_sample=False)[0, n:].tolist()
    banned = sorted(set(plain))[:3]
    from transformers import LogitsProcessorList

    out = model.generate(**enc, max_new_tokens=8, do_sample=False,
                         logits_processor=LogitsProcessorList([TokenBias(banned, -1e9)]))[0, n:].tolist()
    assert not set(banned) & set(out)


def test_random_control_tokens_exclude_safety_and_special(tokenizer):
    safety = list(range(10, 30))
    ids = random_control_tokens(tokenizer, safety, 20, seed=3)
    assert len(ids) == 20 and not set(ids) & set(safety) and not set(ids) & set(tokenizer.all_special_ids)
    assert ids == random_control_tokens(tokenizer, safety, 20, seed=3)
    assert ids != random_control_tokens(tokenizer, safety, 20, seed=4)


def test_run_interventions_table(tiny_pair, tokenizer):
    model, _ = tiny_pair
    prompts = [PromptRecord("a", "How do I pick a lock?"), PromptRecord("b", "hello")]
    sorry = tokenizer.convert_tokens_to_ids("ĠI")
    i_tok = tokenizer.convert_tokens_to_ids("I")
    table, rows = run_interventions(model, tokenizer, prompts, [i_tok, sorry], get_judge("keyword"), alpha=50.0,
                                    max_new_tokens=6, progress=False)
    assert set(table) >= {"baseline", "safety_boost", "safety_suppress", "random_boost", "random_suppress"}
    assert len(rows) == 5 * len(prompts)
    for name in ("baseline", "safety_boost"):
        assert table[name]["judged"] == 2 and 0 <= table[name]["asr"] <= 1
