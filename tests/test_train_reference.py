"""The fast reference: K-row projection, adapters-off LoRA model vs a frozen copy, the naive reference."""

import copy

import pytest
import torch

from safekeel.errors import SafekeelError
from safekeel.testing import build_model, tiny_rows, tiny_tokens
from safekeel.training.collate import Collator, encode_rows
from safekeel.training.reference import NaiveReference, SafetyReference, gather_frame


@pytest.fixture(scope="module")
def batch(tokenizer):
    examples, _ = encode_rows(tokenizer, tiny_rows(5), max_length=256, post_positions=6)
    return Collator(tokenizer.pad_token_id)(examples)


@pytest.fixture(scope="module")
def ids(tokenizer):
    return tiny_tokens(tokenizer, 8).ids_tensor()


def _full_at_s(model, input_ids, attention_mask, index, ids):
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return gather_frame(logits, index)[..., ids], torch.logsumexp(gather_frame(logits, index), -1)


def test_k_row_projection_equals_gathered_full_logits(tokenizer, batch, ids):
    model = build_model(tokenizer, seed=5)
    ref = SafetyReference(model, ids)
    z, lse = ref.answer_logits(batch["input_ids"], batch["attention_mask"], batch["answer_index"],
                               batch["answer_mask"], need_lse=True)
    want, want_lse = _full_at_s(model, batch["input_ids"], batch["attention_mask"], batch["answer_index"], ids)
    m = batch["answer_mask"]
    assert z.shape == (*m.shape, ids.numel())
    assert torch.allclose(z[m], want[m], atol=1e-5)
    assert torch.allclose(lse[m], want_lse[m], atol=1e-5)
    assert ref.check(batch) < 1e-4


def test_lse_chunks(tokenizer, batch, ids, monkeypatch):
    from safekeel.training import reference

    monkeypatch.setattr(reference, "_LSE_CHUNK_ELEMENTS", 7)  # many vocabulary chunks
    model = build_model(tokenizer, seed=5)
    _, lse = SafetyReference(model, ids).answer_logits(batch["input_ids"], batch["attention_mask"],
                                                       batch["answer_index"], batch["answer_mask"], need_lse=True)
    _, want = _full_at_s(model, batch["input_ids"], batch["attention_mask"], batch["answer_index"], ids)
    m = batch["answer_mask"]
    assert torch.allclose(lse[m], want[m], atol=1e-5)


def test_adapters_off_equals_frozen_copy(tokenizer, batch, ids):
    from peft import LoraConfig, get_peft_model

    base = build_model(tokenizer, seed=6)
    frozen = copy.deepcopy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.5))
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking adapters, so adapters-on differs from the reference
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.train()  # dropout active: the reference must switch it off
    ref = SafetyReference(peft_model, ids)
    views = ref.views(batch, need_lse=True)
    m = batch["answer_mask"]
    want, want_lse = _full_at_s(frozen, batch["input_ids"], batch["attention_mask"], batch["answer_index"], ids)
    assert torch.allclose(views["ref_full"][m], want[m], atol=1e-5)
    assert torch.allclose(views["ref_lse"][m], want_lse[m], atol=1e-5)
    post_want, _ = _full_at_s(frozen, batch["post_input_ids"], batch["post_attention_mask"], batch["post_index"], ids)
    pm = batch["post_mask"]
    assert torch.allclose(views["ref_post"][pm], post_want[pm], atol=1e-5)
    # beyond the no-prompt view, ref_post falls back to the full view
    assert torch.equal(views["ref_post"][m & ~pm], views["ref_full"][m & ~pm])
    assert peft_model.training  # mode restored
    peft_model.eval()
    on, _ = _full_at_s(peft_model, batch["input_ids"], batch["attention_mask"], batch["answer_index"], ids)
    assert not torch.allclose(on[m], want[m], atol=1e-3)  # the adapters do matter


def test_naive_reference_matches_fast(tokenizer, batch, ids):
    model = build_model(tokenizer, seed=7)
    fast = SafetyReference(model, ids).views(batch, need_lse=True)
    naive = NaiveReference(copy.deepcopy(model), ids).views(batch, need_lse=True)
    m = batch["answer_mask"]
    for key in ("ref_full", "ref_post", "ref_lse"):
        assert torch.allclose(fast[key][m], naive[key][m], atol=1e-5), key


def test_check_catches_an_unknown_head(tokenizer, batch, ids):
    model = build_model(tokenizer, seed=8)
    model.config.final_logit_softcapping = 2.0  # Llama ignores it, the projection applies it: they disagree
    with pytest.raises(SafekeelError, match="not a plain linear"):
        SafetyReference(model, ids).check(batch)
