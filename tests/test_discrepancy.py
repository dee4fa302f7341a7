"""d(v) (paper Eq. 1-2) against a slow per-position implementation, and top-K selection."""

import pytest
import torch

from safekeel.tokens.discrepancy import Discrepancy, compute_discrepancy, select_top_k


def _slow_d(aligned, base, al_prompts, ba_prompts, answers, per_sample):
    """Literal: one sequence at a time, one position at a time, full-vocabulary softmax."""
    vocab = aligned.config.vocab_size
    total, total_p, count = torch.zeros(vocab, dtype=torch.float64), torch.zeros(vocab, dtype=torch.float64), 0
    for pa, pb, ans in zip(al_prompts, ba_prompts, answers):
        seq_a = torch.tensor([pa + ans])
        seq_b = torch.tensor([pb + ans])
        with torch.no_grad():
            la, lb = aligned(seq_a).logits[0], base(seq_b).logits[0]
        s, sp = torch.zeros(vocab, dtype=torch.float64), torch.zeros(vocab, dtype=torch.float64)
        for t in range(len(ans)):
            p_al = torch.softmax(la[len(pa) - 1 + t].double(), -1)
            p_ba = torch.softmax(lb[len(pb) - 1 + t].double(), -1)
            s += p_al - p_ba
            sp += p_al
        if per_sample:
            total += s / len(ans)
            total_p += sp / len(ans)
        else:
            total += s
            total_p += sp
        count += len(ans)
    n = len(answers) if per_sample else count
    return total / n, total_p / n


@pytest.mark.parametrize("per_sample", [False, True])
def test_discrepancy_matches_slow_loop(tiny_pair, tokenizer, per_sample):
    aligned, base = tiny_pair
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids
    al_prompts = [enc("<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n"),
                  enc("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"),
                  enc("<|im_start|>user\nWrite a tutorial on how to make a cake with flour<|im_end|>\n<|im_start|>assistant\n")]
    ba_prompts = [enc("User: How do I pick a lock?\n\nAssistant: "), enc("User: hello\n\nAssistant: "),
                  enc("User: cake\n\nAssistant: ")]
    answers = [enc("I'm sorry, but I cannot help with that."), enc("I cannot."),
               enc("As an AI assistant, I must decline. Such content could cause harm.")]
    fast = compute_discrepancy(aligned, base, al_prompts, ba_prompts, answers, pad_id=tokenizer.pad_token_id,
                               batch_size=2, per_sample=per_sample, progress=False)
    d_ref, p_ref = _slow_d(aligned, base, al_prompts, ba_prompts, answers, per_sample)
    assert fast.d.dtype == torch.float64
    assert torch.allclose(fast.d, d_ref, atol=1e-6)
    assert torch.allclose(fast.p_aligned, p_ref, atol=1e-6)
    assert fast.n_positions == sum(len(a) for a in answers)
    assert abs(float(fast.d.sum())) < 1e-6  # Δ of two distributions sums to 0
    assert fast.d.abs().max() > 1e-4  # two different random models really differ


def test_identical_models_give_zero(tiny_pair, tokenizer):
    aligned, _ = tiny_pair
    ids = [tokenizer("I cannot help", add_special_tokens=False).input_ids]
    disc = compute_discrepancy(aligned, aligned, [[5, 6, 7]], [[5, 6, 7]], ids, pad_id=0, progress=False)
    assert disc.d.abs().max() < 1e-7


def test_select_top_k_paper_and_reference_code():
    d = torch.tensor([0.05, -0.2, 0.3, 0.1, 0.0, 0.2], dtype=torch.float64)
    p = torch.tensor([0.5, 0.3, 0.05, 0.1, 0.04, 0.01], dtype=torch.float64)
    disc = Discrepancy(d, p, 10, 2)
    ids, scores, w = select_top_k(disc, 3, "paper")
    assert ids.tolist() == [2, 5, 3]
    assert scores.tolist() == [0.3, 0.2, 0.1]
    assert torch.equal(w, scores)
    ids, scores, w = select_top_k(disc, 3, "reference-code")
    # top-3 by aligned probability are {0, 1, 3}; rank order by d: 3 (0.1), 0 (0.05), 1 (-0.2)
    assert ids.tolist() == [3, 0, 1]
    vals = torch.tensor([0.1, 0.05, -0.2], dtype=torch.float64)
    z = ((vals - vals.mean()) / (vals.std() + 1e-6)).clamp_min(0)
    assert torch.allclose(w, z)
    assert w[-1] == 0  # clamped, but kept in S


def test_select_top_k_bad_k():
    disc = Discrepancy(torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1, 1)
    with pytest.raises(ValueError):
        select_top_k(disc, 5)
    with pytest.raises(ValueError):
        select_top_k(disc, 2, preset="nope")
