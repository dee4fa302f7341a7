"""constrained_sft (Qi et al. 2024) against literal implementations: the β schedule, the per-token
weights of the authors' `soft_sft_loss` loop, the gradient of the paper's objective, and the reference's
answer-token log-probabilities against a full forward."""

import pytest
import torch
import torch.nn.functional as F

from safekeel.defences.constrained_sft import ConstrainedSFTOptions, beta_schedule, token_weights


def literal_beta_list(length, beta=0.1, bias_factor=20.0, bias_length=5, first_token_bias_factor=5.0):
    """The authors' get_beta_list, transcribed."""
    prefix = [beta * bias_factor] * bias_length
    if bias_length != 0:
        prefix[0] = beta * first_token_bias_factor
    if length <= bias_length:
        return prefix[:length]
    return prefix + [beta] * (length - bias_length)


@pytest.mark.parametrize("length", [1, 3, 5, 6, 12])
@pytest.mark.parametrize("bias_length", [0, 1, 5])
def test_beta_schedule_is_the_authors(length, bias_length):
    o = ConstrainedSFTOptions.build({"bias_length": bias_length})
    assert beta_schedule(length, o).tolist() == pytest.approx(literal_beta_list(length, bias_length=bias_length))


def literal_weights(policy_rows, ref_rows, o):
    """Per row, per valid token: max(2 (1 - sigmoid(beta_t (p - r))), min_weight), as the authors' loop."""
    out = []
    for p_row, r_row in zip(policy_rows, ref_rows):
        betas = literal_beta_list(len(p_row), o.beta, o.bias_factor, o.bias_length, o.first_token_bias_factor)
        out.append([max(2 * (1 - 1 / (1 + torch.exp(torch.tensor(-b * (p - r))).item())), o.min_weight)
                    for b, p, r in zip(betas, p_row, r_row)])
    return out


def test_weights_match_the_literal_loop_on_ragged_rows():
    torch.manual_seed(0)
    o = ConstrainedSFTOptions.build({})
    lengths = [7, 3, 1]
    policy = -torch.rand(3, 7) * 4
    ref = -torch.rand(3, 7) * 4
    ref[0, 0] = policy[0, 0] - 50.0  # the model far above the reference: the clamp
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    w = token_weights(policy, ref, mask, o)
    expected = literal_weights([policy[i, :n].tolist() for i, n in enumerate(lengths)],
                               [ref[i, :n].tolist() for i, n in enumerate(lengths)], o)
    for i, n in enumerate(lengths):
        assert w[i, :n].tolist() == pytest.approx(expected[i], rel=1e-5, abs=1e-7)
        assert (w[i, n:] == 0).all()
    assert w[0, 0].item() == pytest.approx(1e-3)  # clamped
    equal = token_weights(ref, ref, mask, o)  # Δ = 0: weight 1, i.e. plain SFT
    assert equal[mask].tolist() == pytest.approx([1.0] * int(mask.sum()))


def test_weighted_ce_has_the_gradient_of_the_paper_objective():
    """d/dθ Σ w_t · CE_t (w detached) = d/dθ Σ -(2/β_t) log σ(β_t (log π - log π_ref)) when no clamp binds."""
    torch.manual_seed(1)
    o = ConstrainedSFTOptions.build({"min_weight": 0.0})
    logits = torch.randn(2, 6, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 6))
    ref_logp = torch.randn(2, 6).clamp(max=-0.1) - 1
    mask = torch.ones(2, 6, dtype=torch.bool)
    logp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    beta = beta_schedule(6, o)
    objective = (-(2 / beta) * F.logsigmoid(beta * (logp - ref_logp))).sum()
    (g_obj,) = torch.autograd.grad(objective, logits)
    logp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    weighted = (token_weights(logp, ref_logp, mask, o) * -logp).sum()
    (g_w,) = torch.autograd.grad(weighted, logits)
    assert torch.allclose(g_obj, g_w, atol=1e-6)


def test_the_reference_answer_token_logps_equal_the_full_forward(tiny_model_and_batch):
    from safekeel.training.reference import SafetyReference

    model, batch = tiny_model_and_batch
    ref = SafetyReference(model, None)
    fast = ref.target_logps(batch)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    index, targets, mask = batch["answer_index"], batch["answer_targets"], batch["answer_mask"]
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                assert fast[b, t].item() == pytest.approx(full[b, index[b, t], targets[b, t]].item(), abs=1e-4)
            else:
                assert fast[b, t].item() == 0.0
    assert ref.check_targets(batch) < 1e-3


@pytest.fixture
def tiny_model_and_batch():
    from safekeel.testing import build_model, build_tokenizer, tiny_rows
    from safekeel.training.collate import Collator, encode_rows

    tok = build_tokenizer()
    model = build_model(tok, seed=3).eval()
    examples, _ = encode_rows(tok, tiny_rows(4), max_length=128, post_positions=0)
    return model, Collator(tok.pad_token_id)(examples)


@pytest.mark.parametrize("bad, message", [({"beta": 0}, "--beta"), ({"bias_length": -1}, "--bias-length"),
                                          ({"min_weight": 3}, "--min-weight")])
def test_bad_options(bad, message):
    from safekeel.errors import SafekeelError

    with pytest.raises(SafekeelError, match=message):
        ConstrainedSFTOptions.build(bad)
