"""Tokenisation and collation for training: answer-only labels and PACT's no-prompt view alignment."""

import pytest
import torch

from safekeel.chat import assistant_header, format_prompt
from safekeel.errors import SafekeelError
from safekeel.testing import build_model, tiny_rows
from safekeel.training.collate import Collator, encode_rows, header_ids


@pytest.fixture(scope="module")
def rows():
    return tiny_rows(6)


def test_labels_only_on_answer_tokens(tokenizer, rows):
    examples, summary = encode_rows(tokenizer, rows, max_length=256, post_positions=None)
    batch = Collator(tokenizer.pad_token_id)(examples)
    assert summary["examples"] == len(rows) and summary["harmful"] == sum(r["harmful"] for r in rows)
    for b, (ex, row) in enumerate(zip(examples, rows)):
        labels = batch["labels"][b]
        kept = labels[labels != -100].tolist()
        # the answer is the assistant's text and its end-of-turn marker, nothing of the prompt
        assert tokenizer.decode(kept) == row["messages"][-1]["content"] + "<|im_end|>"
        prompt = format_prompt(tokenizer, row["messages"][0]["content"])
        assert ex["input_ids"][: ex["prompt_len"]] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert (labels[: ex["prompt_len"]] == -100).all()
        assert (labels[len(ex["input_ids"]):] == -100).all()  # padding
        assert (batch["attention_mask"][b].sum()) == len(ex["input_ids"])
    assert int((batch["shift_labels"] != -100).sum()) == summary["answer_tokens"] == int(batch["answer_mask"].sum())


def test_answer_frame_targets(tokenizer, rows):
    examples, _ = encode_rows(tokenizer, rows, max_length=256, post_positions=None)
    batch = Collator(tokenizer.pad_token_id)(examples)
    m = batch["answer_mask"]
    # column t of the frame predicts answer token t: the next input token in the full view
    nxt = batch["input_ids"].gather(1, batch["answer_index"] + 1)
    assert torch.equal(nxt[m], batch["answer_targets"][m])
    assert torch.equal(batch["labels"].gather(1, batch["answer_index"] + 1)[m], batch["answer_targets"][m])


def test_no_prompt_view_aligns_with_answer_positions(tokenizer, rows):
    """The no-prompt view's column for answer position t predicts the same target token, and its logits equal
    a literal forward of header + y_<t (no BOS, no user turn)."""
    examples, _ = encode_rows(tokenizer, rows, max_length=256, post_positions=5)
    batch = Collator(tokenizer.pad_token_id)(examples)
    head = header_ids(tokenizer)
    assert tokenizer.decode(head) == assistant_header(tokenizer)
    model = build_model(tokenizer, seed=3)
    with torch.no_grad():
        post_logits = model(input_ids=batch["post_input_ids"], attention_mask=batch["post_attention_mask"]).logits
    for b, ex in enumerate(examples):
        p = ex["post_len"]
        assert p == min(5, ex["answer_len"])
        assert ex["post_ids"][: len(head)] == head
        idx = batch["post_index"][b, :p]
        answer = ex["input_ids"][ex["prompt_len"]:]
        # inputs after each no-prompt column are the answer tokens themselves (where the view continues)
        assert batch["post_input_ids"][b, idx[:-1] + 1].tolist() == answer[: p - 1]
        assert batch["post_mask"][b].sum() == p
        for t in range(p):
            literal = torch.tensor([head + answer[:t]])
            with torch.no_grad():
                want = model(input_ids=literal).logits[0, -1]
            assert torch.allclose(post_logits[b, idx[t]], want, atol=1e-5)


def test_post_positions_switches(tokenizer, rows):
    none, _ = encode_rows(tokenizer, rows, max_length=256, post_positions=0)
    assert all(e["post_len"] == 0 and e["post_ids"] == [] for e in none)
    assert "post_input_ids" not in Collator(tokenizer.pad_token_id)(none)
    every, _ = encode_rows(tokenizer, rows, max_length=256, post_positions=None)
    assert all(e["post_len"] == e["answer_len"] for e in every)


def test_truncation_drop_and_duplicate_ids(tokenizer, rows):
    examples, _ = encode_rows(tokenizer, rows, max_length=256, post_positions=None)
    prompt_len = examples[0]["prompt_len"]
    cut, summary = encode_rows(tokenizer, rows[:1], max_length=prompt_len + 3, post_positions=None)
    assert cut[0]["answer_len"] == 3 and summary["truncated"] == 1
    with pytest.raises(SafekeelError, match="max-length"):
        encode_rows(tokenizer, rows[:1], max_length=prompt_len, post_positions=None)
    twice, _ = encode_rows(tokenizer, [rows[0], rows[0]], max_length=256, post_positions=None)
    assert [e["id"] for e in twice] == ["r0", "r0#2"]
    with pytest.raises(SafekeelError, match="assistant"):
        encode_rows(tokenizer, [{"id": "x", "messages": [{"role": "user", "content": "hi"}]}], max_length=64,
                    post_positions=0)
    with pytest.raises(SafekeelError, match="empty"):
        encode_rows(tokenizer, [], max_length=64, post_positions=0)


def test_max_length_is_cut_to_the_model_context(tiny_pair, tokenizer, caplog):
    """--max-length beyond the position table would crash mid-training: it is cut, with a warning."""
    from safekeel.training.run import _fit_context

    model = tiny_pair[0]  # 512 positions
    with caplog.at_level("WARNING"):
        assert _fit_context(4096, model, tokenizer) == 512
    assert "longer than the model's context (512 tokens)" in caplog.text
    assert _fit_context(256, model, tokenizer) == 256
