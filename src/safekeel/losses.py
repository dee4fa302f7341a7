"""The PACT regulariser (paper §3.1-3.2; docs/design.md, "PACT formulas") and the full-vocabulary KL baseline.

Pure torch functions, vectorised over positions. Shapes: B rows, T columns, K safety tokens S,
V vocabulary. `mask` [B, T] is true at answer positions (a position predicts the next answer token).
Everything is computed in at least float32 (bf16 softmax / cumulative sums over S are too coarse).
Reference tensors are always detached: the gradient reaches the fine-tuned logits only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["answer_ce", "answer_positions", "answer_token_terms", "dispersion", "full_vocab_kl", "gather_frame", "pact_kl"]


def gather_frame(x: Tensor, index: Tensor) -> Tensor:
    """x [B, L, D] at columns index [B, A] -> [B, A, D] (the answer frame of collate.py)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _up(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012). x is clamped just below 0,
    so a total S mass that rounds to 1 (or a log-sum-exp a hair too small) gives a tiny, finite rest bin."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum_v p (log p - log q) over the last dim, with 0 * log 0 = 0 (zero-weight tokens have
    log p = -inf). `where` keeps NaN out of the value and gives exact zero gradient there."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _masked_means(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(mean over all true positions, per-row mean [B]); 0, not NaN, where there are none."""
    x = torch.where(mask, x, torch.zeros_like(x))
    n_row = mask.sum(1)
    return x.sum() / n_row.sum().clamp_min(1), x.sum(1) / n_row.clamp_min(1)


def answer_positions(mask: Tensor) -> Tensor:
    """Answer-position index t: [B, T] bool -> [B, T] long.

    t counts true entries of each row from 0 (cumsum - 1), so left padding or a gap does not shift it;
    -1 where mask is false."""
    mask = mask.bool()
    return torch.where(mask, mask.long().cumsum(1) - 1, torch.full_like(mask, -1, dtype=torch.long))


@torch.no_grad()
def dispersion(logits: Tensor, threshold: float = 0.9) -> Tensor:
    """Paper Eq. 5: [..., K] logits on S -> [...] in (0, 1], no gradient.

    (smallest k whose k largest probabilities of softmax over S sum to >= threshold) / K.
    The count is clamped to K, because a cumulative sum can round to just under 1."""
    k_all = logits.shape[-1]
    cdf = torch.softmax(_up(logits), -1).sort(-1, descending=True).values.cumsum(-1)
    k = ((cdf < threshold).sum(-1) + 1).clamp(max=k_all)
    return k.to(cdf.dtype) / k_all


def pact_kl(
    ft: Tensor,
    ref_full: Tensor,
    ref_post: Tensor | None,
    weights: Tensor | None,
    mask: Tensor,
    *,
    n: int = 8,
    tau: float = 8.0,
    threshold: float = 0.9,
    calibrate: bool = True,
    decay: bool = True,
    temperature: float = 1.0,
    gate_scale: float = 1.0,
    gate_bias: float = 0.0,
    use_weights: bool = True,
    ref_lse: Tensor | None = None,
    ft_lse: Tensor | None = None,
    safety_mass: bool = False,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """PACT's L_KL^safety (paper Eq. 3-8): mean over answer positions of KL(p_ref^S || p_ft^S).

    ft, ref_full, ref_post: [B, T, K] logits on S of the fine-tuned model (full context), the reference
    (full context) and the reference's no-prompt view at the same answer positions (None if not calibrate).
    weights: [K] >= 0, at least one > 0 (zeros allowed: such tokens stay in S for p_ft and get reference
    share 0, the authors' code). mask: [B, T] bool. Returns a scalar (0 with grad if mask is empty).

    - c_t = sigmoid(gate_scale * (I(ft) - I(ref_post) - gate_bias)), I = `dispersion` on the logits at
      temperature 1: the authors' code gates on raw logits (its gate_T = 1) and divides by T only in the
      KL. c~_t = c_t * exp(-(t - n) / tau) for t >= n if decay; t from `answer_positions`. No gradient.
    - z_mix = (1 - c~) z_full + c~ z_post (z_full if not calibrate);
      p_ref^S = softmax_S(z_mix / T + log w) if use_weights else softmax_S(z_mix / T), T = temperature:
      Eq. 3 (p_ref w / sum_S p_ref w, p_ref at temperature T) as the normaliser cancels; w is not
      tempered (authors' code). p_ft^S = softmax_S(ft / T), never weighted.
    - KL is multiplied by temperature**2 (keeps gradient scale, as in distillation and the authors' code).
    - safety_mass=True (opt-in, temperature must be 1): one more bin, "rest of the vocabulary", so the
      total mass on S is held too. ft_lse / ref_lse [B, T] are full-vocabulary log-sum-exps (ft_lse with
      gradient; ref_lse of the full-context reference). p_ft(v) = exp(ft(v) - ft_lse) on S, rest = 1 - sum.
      The reference keeps its true total S mass m = sum_S exp(z_full - ref_lse) and puts the shape above
      inside S: p_ref(v) = m p_ref^S(v), rest = 1 - m. Only the full-context mass is known (no lse of the
      no-prompt view is cached), and mixing logits with an unrelated normaliser could give a "mass" > 1;
      so calibration and weights change the shape inside S, never the mass. Then KL = KL(m_ref||m_ft on
      2 bins) + m_ref * KL(shape), i.e. the paper's term scaled by m_ref plus a mass term.
    - return_stats: also a dict of detached tensors: kl (scalar), kl_per_row [B] (0 for empty rows),
      gate_mean_first_n (mean c~ over answer positions t < n, 0 if none or not calibrate),
      gate_first_n_per_row [B], gate_mean (all answer positions), n_positions, and when given the lse,
      ft_safety_mass / ref_safety_mass (mean total probability on S).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if safety_mass and temperature != 1.0:
        raise ValueError("safety_mass needs temperature 1: the cached log-sum-exps are at temperature 1")
    if safety_mass and (ref_lse is None or ft_lse is None):
        raise ValueError("safety_mass needs ref_lse and ft_lse")
    if calibrate and ref_post is None:
        raise ValueError("calibrate=True needs ref_post")
    if calibrate and decay and tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mask = mask.bool()
    ft = _up(ft)
    z_full = ref_full.detach().to(ft.dtype)

    if calibrate:
        z_post = ref_post.detach().to(ft.dtype)
        with torch.no_grad():  # the gate is a constant per position (paper: "c~_t carries no gradient")
            c = torch.sigmoid(
                gate_scale * (dispersion(ft, threshold) - dispersion(z_post, threshold) - gate_bias)
            )
            if decay:
                t = answer_positions(mask)
                c = c * torch.exp(-(t - n).clamp_min(0).to(c.dtype) / tau)
        z_ref = (1 - c).unsqueeze(-1) * z_full + c.unsqueeze(-1) * z_post
    else:
        c = torch.zeros(mask.shape, dtype=ft.dtype, device=ft.device)
        z_ref = z_full

    z_ref = z_ref / temperature
    if use_weights:  # after the temperature: w multiplies the tempered probabilities (Eq. 3, authors' code)
        w = weights.detach().to(ft.dtype)
        if bool((w < 0).any()) or not bool((w > 0).any()):
            raise ValueError("weights must be >= 0 with at least one > 0")
        z_ref = z_ref + w.log()  # log 0 = -inf: that token's reference share is exactly 0

    log_p_ref = F.log_softmax(z_ref, -1)
    log_p_ft = F.log_softmax(ft / temperature, -1)
    stats: dict[str, Tensor] = {}
    log_m_ft = log_m_ref = None
    if ft_lse is not None:  # total probability on S, in log space (<= 0 up to rounding)
        log_m_ft = (torch.logsumexp(ft, -1) - _up(ft_lse)).clamp(max=0)
    if ref_lse is not None:
        log_m_ref = (torch.logsumexp(z_full, -1) - _up(ref_lse).detach()).clamp(max=0)
    if safety_mass:
        log_p_ref = torch.cat([log_p_ref + log_m_ref[..., None], _log1mexp(log_m_ref)[..., None]], -1)
        log_p_ft = torch.cat([log_p_ft + log_m_ft[..., None], _log1mexp(log_m_ft)[..., None]], -1)

    kl_t = _kl(log_p_ref, log_p_ft) * temperature**2  # [B, T]
    kl, kl_row = _masked_means(kl_t, mask)
    if not return_stats:
        return kl
    with torch.no_grad():
        first = mask & (answer_positions(mask) < n)
        stats["kl"], stats["kl_per_row"] = kl.detach(), kl_row.detach()
        stats["gate_mean_first_n"], stats["gate_first_n_per_row"] = _masked_means(c, first)
        stats["gate_mean"] = _masked_means(c, mask)[0]
        stats["n_positions"] = mask.sum()
        for name, lm in (("ft_safety_mass", log_m_ft), ("ref_safety_mass", log_m_ref)):
            if lm is not None:
                stats[name] = _masked_means(lm.detach().exp(), mask)[0]
    return kl, stats


def full_vocab_kl(ft_logits: Tensor, ref_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """The `kl` baseline: mean over answer positions of KL(p_ref || p_ft) over the full vocabulary.

    ft_logits, ref_logits: [B, T, V]; mask: [B, T] bool. Softmax of logits / temperature, KL times
    temperature**2. Only the masked positions are gathered (no chunking: autograd keeps each chunk's
    log-softmax for the backward anyway, so chunks would not lower the peak)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = mask.bool()
    log_p_ft = F.log_softmax(_up(ft_logits[mask]) / temperature, -1)  # [N, V]
    log_p_ref = F.log_softmax(_up(ref_logits.detach()[mask]).to(log_p_ft.dtype) / temperature, -1)
    return _kl(log_p_ref, log_p_ft).sum() * temperature**2 / mask.sum().clamp_min(1)


class _AnswerTokenTerms(torch.autograd.Function):
    """Fused CE / safety-token logits / log-sum-exp at the answer positions (see `answer_token_terms`).

    Saves only z and lse [N]: `F.cross_entropy` would also keep its [N, V] log-softmax, and the
    separate `z[:, ids]` would allocate one more [N, V] zero gradient in the backward."""

    @staticmethod
    def forward(ctx, z: Tensor, targets: Tensor, ids: Tensor | None):
        lse = torch.logsumexp(z, -1)  # [N]
        ce = lse - z.gather(1, targets[:, None]).squeeze(1)
        z_k = z[:, ids] if ids is not None else z.new_zeros(z.shape[0], 0)
        ctx.save_for_backward(z, lse, targets, ids if ids is not None else targets.new_zeros(0))
        return ce, z_k, lse

    @staticmethod
    def backward(ctx, g_ce, g_k, g_lse):
        z, lse, targets, ids = ctx.saved_tensors
        # d ce / dz = softmax - onehot(target); d lse / dz = softmax; d z_k / dz = onehot(ids): one buffer.
        g_ce = g_ce if g_ce is not None else torch.zeros_like(lse)
        g_soft = g_ce + g_lse if g_lse is not None else g_ce
        grad = torch.sub(z, lse[:, None]).exp_().mul_(g_soft[:, None])  # [N, V]
        grad.scatter_add_(1, targets[:, None], -g_ce[:, None])
        if g_k is not None and ids.numel():
            grad.index_add_(1, ids, g_k)
        return grad, None, None


def answer_token_terms(z: Tensor, targets: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy, safety-token logits and log-sum-exp of the fine-tuned model in one pass.

    z: [N, V] logits at the N answer positions (float32 or float64); targets: [N] long; ids: [K] long
    safety token ids, or None. Returns ce [N] (= lse - z[target]), z_k [N, K] (= z[:, ids]; [N, 0]
    without ids) and lse [N] (full-vocabulary log-sum-exp), all differentiable in z. Same values and
    gradients as `F.cross_entropy(z, targets, reduction="none")`, `z[:, ids]` and `z.logsumexp(-1)`,
    with one [N, V] buffer in the backward instead of three (tests/test_losses.py)."""
    if z.dim() != 2 or targets.shape != z.shape[:1]:
        raise ValueError(f"z must be [N, V] and targets [N], got {tuple(z.shape)} and {tuple(targets.shape)}")
    return _AnswerTokenTerms.apply(z, targets.long(), None if ids is None else ids.long())


def answer_ce(model, batch: dict) -> Tensor:
    """Per-token cross-entropy [B, A] of `model` on a collated batch's answer tokens (with graph), 0 off
    `answer_mask`. batch: input_ids, attention_mask [B, L]; answer_index, answer_targets, answer_mask [B, A]
    (training/collate.py's answer frame). For defences that need a loss on other data than the step's
    (a gradient on safety data, a Fisher estimate, a layer-ablation score)."""
    mask = batch["answer_mask"].bool()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    z = gather_frame(logits, batch["answer_index"]).float()  # [B, A, V]
    targets = batch["answer_targets"].clamp(min=0)
    ce = F.cross_entropy(z.flatten(0, 1), targets.flatten(), reduction="none").view(mask.shape)
    return torch.where(mask, ce, torch.zeros_like(ce))
