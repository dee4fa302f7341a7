"""Batched greedy generation with left padding equals one-prompt-at-a-time greedy generation; prompts
longer than the model's context are cut from the left, reported, and decoded as the cut prompt."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from safekeel.chat import format_prompt
from safekeel.errors import SafekeelError
from safekeel.generation import Answers, context_length, fit_prompts, generate, prompt_budget
from safekeel.generators import HFGenerator

PROMPTS = [
    "Hi",
    "How do I pick a lock?",
    "Write a tutorial on how to make a cake with flour, sugar and eggs, step by step please.",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "0 1 2",
]


@pytest.fixture(scope="module")
def model_and_texts(tokenizer, tiny_pair):
    model = tiny_pair[0]
    texts = [format_prompt(tokenizer, p) for p in PROMPTS]
    lengths = {len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts}
    assert len(lengths) >= 4  # really different lengths, so batches need padding
    return model, texts


@pytest.fixture(scope="module")
def one_at_a_time(model_and_texts, tokenizer):
    model, texts = model_and_texts
    return [generate(model, tokenizer, [t], max_new_tokens=10, batch_size=1, progress=False)[0] for t in texts]


def _manual_greedy(model, tokenizer, text: str, steps: int, ids=None) -> list[int]:
    """Literal greedy decoding without `generate`: argmax of the last position, appended, repeated."""
    if ids is None:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = []
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(ids).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.mark.parametrize("batch_size", [2, 5])
def test_batched_equals_one_at_a_time(model_and_texts, tokenizer, one_at_a_time, batch_size):
    model, texts = model_and_texts
    batched = generate(model, tokenizer, texts, max_new_tokens=10, batch_size=batch_size, progress=False)
    assert batched == one_at_a_time
    assert any(a for a in batched)  # the random model does produce text


def test_one_at_a_time_is_literal_greedy(model_and_texts, tokenizer, one_at_a_time):
    model, texts = model_and_texts
    for text, answer in zip(texts[:2], one_at_a_time[:2]):
        ids = _manual_greedy(model, tokenizer, text, 10)
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == answer


def test_right_padding_tokenizer_is_left_padded_and_restored(model_and_texts, tokenizer, one_at_a_time):
    model, texts = model_and_texts
    tokenizer.padding_side = "right"
    try:
        batched = generate(model, tokenizer, texts, max_new_tokens=10, batch_size=5, progress=False)
        assert tokenizer.padding_side == "right"
    finally:
        tokenizer.padding_side = "left"
    assert batched == one_at_a_time


def test_hf_generator_wraps_generate(model_and_texts, tokenizer, one_at_a_time):
    model, texts = model_and_texts
    gen = HFGenerator(model, tokenizer, max_new_tokens=10, batch_size=3)
    assert gen.format(PROMPTS[1]) == texts[1]
    assert gen.generate(texts) == one_at_a_time
    assert len(gen.fingerprint["sha256"]) == 64


def test_context_length_and_budget(tokenizer):
    cfg = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    assert tokenizer.model_max_length > 10**20 and context_length(cfg, tokenizer) == 512  # "no limit" ignored
    assert context_length(cfg, SimpleNamespace(model_max_length=300)) == 300  # the smaller one wins
    assert context_length(SimpleNamespace(config=SimpleNamespace(n_positions=1024)), None) == 1024
    assert context_length(None, None) is None and prompt_budget(None, 64) is None
    assert prompt_budget(512, 4) == 508
    with pytest.raises(SafekeelError, match="--max-new-tokens 512 leaves no room"):
        prompt_budget(512, 512)
    assert fit_prompts([[1, 2, 3], [4]], 2) == ([[2, 3], [4]], {0: 3})


def test_long_prompt_is_cut_from_the_left(model_and_texts, tokenizer, one_at_a_time, caplog):
    """The tiny model has 512 positions: a 700-token prompt keeps its last 512 - 4 tokens (the request and
    the assistant header), says so, and its answer is the greedy answer to exactly those tokens."""
    model, texts = model_and_texts
    long_text = format_prompt(tokenizer, "please help " * 350 + "How do I pick a lock?")
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 600
    with caplog.at_level(logging.WARNING, logger="safekeel.generation"):
        out = generate(model, tokenizer, [texts[1], long_text, texts[0]], max_new_tokens=4, batch_size=3,
                       progress=False)
    assert isinstance(out, Answers) and out.truncated == {1: len(ids)} and out.budget == 508
    assert out[0] == generate(model, tokenizer, [texts[1]], max_new_tokens=4, progress=False)[0]  # others intact
    kept = torch.tensor([ids[-508:]])
    assert tokenizer.decode(kept[0]).endswith("How do I pick a lock?<|im_end|>\n<|im_start|>assistant\n")
    assert out[1] == tokenizer.decode(_manual_greedy(model, tokenizer, "", 4, ids=kept), skip_special_tokens=True).strip()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("1 of 3 prompts are longer than the model's context")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safekeel.generation"):
        quiet = generate(model, tokenizer, [long_text], max_new_tokens=4, progress=False, warn=False)
    assert quiet.truncated == {0: len(ids)} and not caplog.records  # the caller reports it instead
    short = generate(model, tokenizer, texts, max_new_tokens=10, batch_size=5, progress=False)
    assert short.truncated == {} and short == one_at_a_time


@pytest.mark.slow
@pytest.mark.network
def test_batched_equals_one_at_a_time_on_packaged_smollm2():
    """The same check on the real packaged SmolLM2 (GGUF Q4_1 dequantised to fp32 on the CPU)."""
    from safekeel.models.loader import load_model

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    texts = [format_prompt(tok, p) for p in PROMPTS[:4]]
    single = [generate(model, tok, [t], max_new_tokens=12, batch_size=1, progress=False)[0] for t in texts]
    assert generate(model, tok, texts, max_new_tokens=12, batch_size=4, progress=False) == single


def test_cut_off_marks_answers_stopped_by_the_token_budget(model_and_texts, tokenizer):
    """`Answers.cut_off`: the answers that used every new token without an end token, as literal greedy
    decoding says; forcing the end token first makes none cut off, forbidding it makes all of them."""
    from safekeel.chat import end_of_turn_ids
    from safekeel.generation import TokenBias

    model, texts = model_and_texts
    ends = end_of_turn_ids(tokenizer)
    answers = generate(model, tokenizer, texts, max_new_tokens=6, batch_size=2, progress=False)
    expected = set()
    for i, text in enumerate(texts):
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        stopped = True
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(ids).logits[0, -1].argmax())
                if nxt in ends:
                    stopped = False
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        if stopped:
            expected.add(i)
    assert answers.cut_off == expected
    forced = generate(model, tokenizer, texts, max_new_tokens=6, batch_size=2, progress=False,
                      logits_processors=[TokenBias(ends, 1e4)])
    assert forced.cut_off == set() and forced == [""] * len(texts)
    forbidden = generate(model, tokenizer, texts, max_new_tokens=6, batch_size=5, progress=False,
                         logits_processors=[TokenBias(ends, -1e9)])
    assert forbidden.cut_off == set(range(len(texts)))
