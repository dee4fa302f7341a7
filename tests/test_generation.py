"""Batched greedy generation with left padding equals one-prompt-at-a-time greedy generation."""

from __future__ import annotations

import pytest
import torch

from safekeel.chat import format_prompt
from safekeel.evaluation.generator import HFGenerator
from safekeel.generation import generate

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


def _manual_greedy(model, tokenizer, text: str, steps: int) -> list[int]:
    """Literal greedy decoding without `generate`: argmax of the last position, appended, repeated."""
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


@pytest.mark.slow
@pytest.mark.network
def test_batched_equals_one_at_a_time_on_packaged_smollm2():
    """The same check on the real packaged SmolLM2 (GGUF Q4_1 dequantised to fp32 on the CPU)."""
    from safekeel.models.loader import load_model

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    texts = [format_prompt(tok, p) for p in PROMPTS[:4]]
    single = [generate(model, tok, [t], max_new_tokens=12, batch_size=1, progress=False)[0] for t in texts]
    assert generate(model, tok, texts, max_new_tokens=12, batch_size=4, progress=False) == single
