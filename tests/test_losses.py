"""Tests of safekeel.losses against a slow, literal, per-position implementation written here.

The literal versions loop over rows and positions, build each distribution with explicit ops, compute
dispersion by sorting and accumulating in Python, and use Eq. 3 in its p*w / sum(p*w) form (the
module uses softmax(z + log w)). Values and gradients w.r.t. the fine-tuned logits are compared in
float64.
"""

import itertools
import math

import pytest
import torch

from safekeel.losses import answer_positions, dispersion, full_vocab_kl, pact_kl

ATOL = 1e-5
B, T, K = 4, 20, 12
PAPER = {"temperature": 1.0, "gate_scale": 1.0, "gate_bias": 0.0, "n": 8, "tau": 8.0}
REFCODE = {"temperature": 2.0, "gate_scale": 2.0, "gate_bias": 0.15, "n": 5, "tau": 3.0}


@pytest.fixture(autouse=True)
def _float64():  # restored afterwards, so other test modules keep their default dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_mask():
    m = torch.zeros(B, T, dtype=torch.bool)
    m[0, :] = True  # full row
    m[1, 7:] = True  # left-padded
    m[2, 2:9] = True  # right-padded, short
    m[2, 12:18] = True  # ...with a gap: t keeps counting answer positions, not columns
    m[3, 15:] = True  # left-padded, short
    return m


def lit_softmax(z):
    e = torch.exp(z - z.max())
    return e / e.sum()


def lit_dispersion(z, threshold=0.9):
    p = sorted((lit_softmax(z.detach())).tolist(), reverse=True)
    acc = 0.0
    for k, pk in enumerate(p, start=1):
        acc += pk
        if acc >= threshold:
            return k / len(p)
    return 1.0


def lit_kl(p, log_q):  # sum p (log p - log q), skipping p == 0
    return sum(p[i] * (torch.log(p[i]) - log_q[i]) for i in range(len(p)) if p[i] > 0)


def lit_pact(
    ft,
    rf,
    rp,
    w,
    mask,
    *,
    n,
    tau,
    temperature,
    gate_scale,
    gate_bias,
    calibrate,
    decay,
    use_weights,
    threshold=0.9,
    ft_full=None,
    rf_full=None,
    S=None,
):
    """Literal PACT; with ft_full/rf_full [B, T, V] and S, the K+1-bin safety-mass version."""
    total, count, gates = 0.0, 0, []
    for b in range(mask.shape[0]):
        t = 0
        for j in range(mask.shape[1]):
            if not mask[b, j]:
                continue
            c = 0.0
            if calibrate:
                c = 1 / (
                    1
                    + math.exp(
                        -gate_scale
                        * (
                            lit_dispersion(ft[b, j], threshold)
                            - lit_dispersion(rp[b, j], threshold)
                            - gate_bias
                        )
                    )
                )
                if decay and t >= n:
                    c *= math.exp(-(t - n) / tau)
            if t < n:
                gates.append(c)
            zmix = (1 - c) * rf[b, j].detach() + c * (rp[b, j].detach() if calibrate else 0)
            p_ref = lit_softmax(zmix / temperature)
            if use_weights:
                p_ref = p_ref * w / (p_ref * w).sum()  # Eq. 3 literally
            p_ft = lit_softmax(ft[b, j] / temperature)
            if ft_full is not None:  # K+1 bins: S and the rest of the vocabulary
                q_ft = lit_softmax(ft_full[b, j])
                q_rf = lit_softmax(rf_full[b, j].detach())
                m_ref = q_rf[S].sum()
                p_ref = torch.cat([m_ref * p_ref, (1 - m_ref).reshape(1)])
                p_ft = torch.cat([q_ft[S], (1 - q_ft[S].sum()).reshape(1)])
            total = total + lit_kl(p_ref, torch.log(p_ft)) * temperature**2
            count += 1
            t += 1
    return total / max(count, 1), (sum(gates) / len(gates) if gates else 0.0)


def inputs(seed, zero_weights=False):
    g = torch.Generator().manual_seed(seed)
    ft = (torch.randn(B, T, K, generator=g) * 2).requires_grad_(True)
    rf = torch.randn(B, T, K, generator=g) * 2
    rp = torch.randn(B, T, K, generator=g) * 3
    rp[:, :, 0] += 4  # a peaked no-prompt view, so gates vary
    w = torch.rand(K, generator=g) + 0.1
    if zero_weights:
        w[[1, 4, 5]] = 0.0  # reference-code preset: clamped z-scores stay in S with weight 0
    return ft, rf, rp, w, make_mask()


@pytest.mark.parametrize(
    "calibrate,decay,use_weights,preset",
    list(itertools.product([False, True], [False, True], [False, True], ["paper", "ref"])),
)
def test_pact_matches_literal(calibrate, decay, use_weights, preset):
    kw = PAPER if preset == "paper" else REFCODE
    seed = 8 * calibrate + 4 * decay + 2 * use_weights + (preset == "ref")
    ft, rf, rp, w, mask = inputs(seed, zero_weights=preset == "ref")
    switches = {"calibrate": calibrate, "decay": decay, "use_weights": use_weights}
    got, stats = pact_kl(ft, rf, rp, w, mask, **kw, **switches, return_stats=True)
    (g_got,) = torch.autograd.grad(got, ft)
    want, gate_want = lit_pact(ft, rf, rp, w, mask, **kw, **switches)
    (g_want,) = torch.autograd.grad(want, ft)
    assert torch.isfinite(got) and torch.isfinite(g_got).all()
    assert torch.allclose(got, want, atol=ATOL) and torch.allclose(g_got, g_want, atol=ATOL)
    assert abs(float(stats["gate_mean_first_n"]) - gate_want) < ATOL
    assert torch.allclose(stats["kl"], got.detach())
    for b in range(B):  # per-row KL = literal KL of that row alone
        row = torch.zeros_like(mask)
        row[b] = mask[b]
        want_row = lit_pact(ft, rf, rp, w, row, **kw, **switches)[0].detach()
        assert abs(float(stats["kl_per_row"][b]) - float(want_row)) < ATOL


@pytest.mark.parametrize("calibrate", [False, True])
def test_zero_when_ft_equals_ref(calibrate):
    ft, _, _, w, mask = inputs(1)
    ref = ft.detach().clone()
    for use_weights, weights in [(False, w), (True, torch.full((K,), 0.3))]:  # uniform w cancels
        kl = pact_kl(ft, ref, ref.clone(), weights, mask, calibrate=calibrate, use_weights=use_weights)
        (g,) = torch.autograd.grad(kl, ft)
        assert abs(kl.item()) < 1e-10 and g.abs().max() < 1e-10


def test_gate_rises_when_ft_disperses():
    mask = torch.ones(2, 6, dtype=torch.bool)
    peaked = torch.zeros(2, 6, 10)
    peaked[..., 3] = 10.0
    flat = torch.zeros(2, 6, 10)
    ref = torch.randn(2, 6, 10)
    _, s_flat = pact_kl(flat, ref, peaked, None, mask, use_weights=False, return_stats=True)
    _, s_peak = pact_kl(peaked, ref, peaked, None, mask, use_weights=False, return_stats=True)
    assert float(s_flat["gate_mean_first_n"]) > 0.6  # sigmoid(0.9 - 0.1)
    assert float(s_peak["gate_mean_first_n"]) < float(s_flat["gate_mean_first_n"])
    assert abs(float(s_peak["gate_mean_first_n"]) - 0.5) < 1e-9


def test_no_gradient_to_reference():
    ft, rf, rp, w, mask = inputs(2)
    rf.requires_grad_(True), rp.requires_grad_(True), w.requires_grad_(True)
    rl = torch.randn(B, T).add(5).requires_grad_(True)
    pact_kl(ft, rf, rp, w, mask).backward()
    pact_kl(ft, rf, rp, w, mask, safety_mass=True, ref_lse=rl, ft_lse=torch.logsumexp(ft, -1) + 1).backward()
    full_vocab_kl(ft, rf, mask, temperature=2.0).backward()
    assert rf.grad is None and rp.grad is None and w.grad is None and rl.grad is None and ft.grad is not None


def test_empty_mask_is_zero_not_nan():
    ft, rf, rp, w, _ = inputs(3)
    empty = torch.zeros(B, T, dtype=torch.bool)
    for kl in (
        pact_kl(ft, rf, rp, w, empty),
        full_vocab_kl(ft, rf, empty),
        pact_kl(ft, rf, rp, w, empty, return_stats=True)[0],
    ):
        (g,) = torch.autograd.grad(kl, ft)
        assert kl.item() == 0.0 and kl.requires_grad and torch.isfinite(g).all()


@pytest.mark.parametrize("calibrate,use_weights", list(itertools.product([False, True], repeat=2)))
def test_safety_mass_matches_literal(calibrate, use_weights):
    g = torch.Generator().manual_seed(7)
    V = 40
    S = torch.tensor([3, 7, 8, 11, 15, 20, 21, 25, 30, 33, 36, 39])
    ft_full = (torch.randn(B, T, V, generator=g) * 2).requires_grad_(True)
    rf_full = torch.randn(B, T, V, generator=g) * 2
    rf_full[..., S[:3]] += 3  # make S carry real mass
    _, _, rp, w, mask = inputs(4, zero_weights=True)
    ft, rf = ft_full[..., S], rf_full[..., S]
    kw = {
        "calibrate": calibrate,
        "decay": True,
        "use_weights": use_weights,
        "n": 5,
        "tau": 3.0,
        "temperature": 1.0,
        "gate_scale": 1.0,
        "gate_bias": 0.0,
    }
    got = pact_kl(
        ft,
        rf,
        rp,
        w,
        mask,
        safety_mass=True,
        ref_lse=torch.logsumexp(rf_full, -1),
        ft_lse=torch.logsumexp(ft_full, -1),
        **kw,
    )
    want, _ = lit_pact(ft, rf, rp, w, mask, ft_full=ft_full, rf_full=rf_full, S=S, **kw)
    (g_got,) = torch.autograd.grad(got, ft_full)
    (g_want,) = torch.autograd.grad(want, ft_full)
    assert torch.allclose(got, want, atol=ATOL) and torch.allclose(g_got, g_want, atol=ATOL)
    # ft == ref (and no weights): zero
    same = pact_kl(
        rf,
        rf,
        rf,
        None,
        mask,
        calibrate=calibrate,
        use_weights=False,
        safety_mass=True,
        ref_lse=torch.logsumexp(rf_full, -1),
        ft_lse=torch.logsumexp(rf_full, -1),
    )
    assert abs(same.item()) < 1e-10
    with pytest.raises(ValueError):
        pact_kl(ft, rf, rp, w, mask, safety_mass=True, temperature=2.0, ref_lse=rf[..., 0], ft_lse=ft[..., 0])


def test_full_vocab_kl_matches_literal():
    g = torch.Generator().manual_seed(5)
    ft = torch.randn(B, T, 30, generator=g).requires_grad_(True)
    ref = torch.randn(B, T, 30, generator=g) * 2
    mask = make_mask()
    for temp in (1.0, 2.0):
        got = full_vocab_kl(ft, ref, mask, temperature=temp)
        terms = [
            lit_kl(lit_softmax(ref[b, j] / temp), torch.log(lit_softmax(ft[b, j] / temp))) * temp**2
            for b in range(B)
            for j in range(T)
            if mask[b, j]
        ]
        want = sum(terms) / len(terms)
        assert torch.allclose(got, want, atol=ATOL)
        assert torch.allclose(torch.autograd.grad(got, ft)[0], torch.autograd.grad(want, ft)[0], atol=ATOL)


def test_dispersion_and_answer_positions():
    z = torch.randn(50, K) * 2
    z[:5] = 0.0  # flat: needs ceil(0.9 K) tokens
    z[5:10, 0] = 20.0  # peaked: one token
    want = torch.tensor([lit_dispersion(row) for row in z])
    assert torch.equal(dispersion(z), want)
    assert torch.allclose(dispersion(z[:5]), torch.full((5,), math.ceil(0.9 * K) / K))
    assert torch.all(dispersion(z[5:10]) == 1 / K)
    t = answer_positions(make_mask())
    assert t[1, 7].item() == 0 and t[1, 6].item() == -1 and t[2, 12].item() == 7 and t[3, -1].item() == 4


# ---------------------------------------------------------------------------------- answer_token_terms
@pytest.mark.parametrize("with_ids", [True, False])
def test_answer_token_terms_matches_separate_ops(with_ids):
    from safekeel.losses import answer_token_terms

    g = torch.Generator().manual_seed(3)
    z = (torch.randn(7, 31, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randint(0, 31, (7,), generator=g)
    ids = torch.tensor([4, 0, 30, 9]) if with_ids else None
    w_ce, w_k, w_l = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)

    ce, zk, lse = answer_token_terms(z, t, ids)
    loss = (ce * w_ce).sum() + (lse * w_l).sum() + ((zk * w_k).sum() if with_ids else 0)
    grad, = torch.autograd.grad(loss, z)

    z2 = z.detach().clone().requires_grad_()
    ce2 = torch.nn.functional.cross_entropy(z2, t, reduction="none")
    lse2 = z2.logsumexp(-1)
    loss2 = (ce2 * w_ce).sum() + (lse2 * w_l).sum() + (((z2[:, ids]) * w_k).sum() if with_ids else 0)
    grad2, = torch.autograd.grad(loss2, z2)
    torch.testing.assert_close(ce, ce2)
    torch.testing.assert_close(lse, lse2)
    if with_ids:
        torch.testing.assert_close(zk, z2[:, ids])
    else:
        assert zk.shape == (7, 0)
    torch.testing.assert_close(grad, grad2)
    assert torch.autograd.gradcheck(lambda x: answer_token_terms(x, t, ids)[0].sum() + answer_token_terms(x, t, ids)[1].sum(), (z.detach().clone().requires_grad_(),))


def test_answer_token_terms_only_ce_used():
    """Outputs that do not reach the loss get no gradient (None in the backward) and are skipped."""
    from safekeel.losses import answer_token_terms

    z = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    t = torch.arange(5)
    ce, _, _ = answer_token_terms(z, t, torch.tensor([1, 2]))
    g, = torch.autograd.grad(ce.sum(), z)
    g2, = torch.autograd.grad(torch.nn.functional.cross_entropy(z, t, reduction="sum"), z)
    torch.testing.assert_close(g, g2)
    with pytest.raises(ValueError):
        answer_token_terms(z[0], t)
