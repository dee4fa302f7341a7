"""The token-level probability discrepancy d(v) between an aligned and a base model (paper Eq. 1–2).

For each (prompt, answer) pair the answer is teacher-forced through both models; at every answer
position t, Δ_t(v) = p_aligned(v | x, y_<t) − p_base(v | x, y_<t) over the whole vocabulary. Sums are
accumulated in float64 one batch at a time, so memory is O(B·T·V) for one batch, never [N, T, V].

Two averaging conventions:
- `paper`: d = mean of Δ over every answer position of every prompt (Eq. 2);
- `per_sample` (the authors' code): mean over positions within each answer, then mean over answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Discrepancy:
    d: torch.Tensor  # [V] float64, mean Δ
    p_aligned: torch.Tensor  # [V] float64, mean aligned probability (same averaging as d)
    n_positions: int
    n_answers: int


def _pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def answer_probs(model, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-force answers after prompts (right padding). Returns (probs [B, T, V] float32, valid [B, T]
    bool), where probs[b, t] = p(· | prompt_b, answer_b[:t]) and T = the longest answer."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(a) for p, a in zip(prompt_ids, answer_ids)]
    ids, mask = _pad_right(seqs, pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, L, V]
    t_max = max(len(a) for a in answer_ids)
    vocab = logits.shape[-1]
    # position p predicts token p+1, so answer token t is predicted at column len(prompt) - 1 + t
    cols = torch.stack([torch.arange(t_max) + len(p) - 1 for p in prompt_ids])  # [B, T]
    valid = torch.arange(t_max)[None, :] < torch.tensor([len(a) for a in answer_ids])[:, None]
    cols = cols.clamp(max=logits.shape[1] - 1).to(device)
    picked = torch.gather(logits, 1, cols[..., None].expand(-1, -1, vocab))  # [B, T, V]
    return torch.softmax(picked.float(), dim=-1), valid.to(device)


def compute_discrepancy(
    aligned,
    base,
    aligned_prompt_ids: Sequence[Sequence[int]],
    base_prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 4,
    per_sample: bool = False,
    progress: bool = True,
) -> Discrepancy:
    """Mean Δ over answer positions (see module docstring). Answers must be non-empty."""
    n = len(answer_ids)
    if not (n == len(aligned_prompt_ids) == len(base_prompt_ids)):
        raise ValueError("prompt and answer lists differ in length")
    if n == 0 or any(len(a) == 0 for a in answer_ids):
        raise ValueError("every answer must have at least one token")
    vocab = aligned.get_output_embeddings().weight.shape[0]
    d_sum = torch.zeros(vocab, dtype=torch.float64)
    p_sum = torch.zeros(vocab, dtype=torch.float64)
    positions = 0
    order = sorted(range(n), key=lambda i: len(aligned_prompt_ids[i]) + len(answer_ids[i]))
    for start in tqdm(range(0, n, batch_size), desc="teacher forcing", disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        ans = [answer_ids[i] for i in idx]
        p_al, valid = answer_probs(aligned, [aligned_prompt_ids[i] for i in idx], ans, pad_id)
        p_ba, _ = answer_probs(base, [base_prompt_ids[i] for i in idx], ans, pad_id)
        delta = (p_al.double() - p_ba.double().to(p_al.device)) * valid[..., None]  # [B, T, V]
        p_al = p_al.double() * valid[..., None]
        if per_sample:  # mean over each answer's positions first
            lengths = valid.sum(1, keepdim=True).double()  # [B, 1]
            d_sum += (delta.sum(1) / lengths).sum(0).cpu()
            p_sum += (p_al.sum(1) / lengths).sum(0).cpu()
        else:
            d_sum += delta.sum((0, 1)).cpu()
            p_sum += p_al.sum((0, 1)).cpu()
        positions += int(valid.sum())
    denom = n if per_sample else positions
    return Discrepancy(d_sum / denom, p_sum / denom, positions, n)


def select_top_k(disc: Discrepancy, k: int, preset: str = "paper", exclude: Sequence[int] = ()):
    """Pick S and its weights.

    - `paper`: S = top-K by d, rank order by d, weights w = d on S (clamped to a tiny positive floor).
    - `reference-code`: S = top-K by mean aligned probability; weights = z-score of d over S, clamped at
      0 (tokens with weight 0 stay in S: the fine-tuned softmax still covers them). Rank order by d.
    Returns (token_ids [K] long, scores [K] float64 = d, weights [K] float64).
    """
    vocab = disc.d.shape[0]
    if k <= 0 or k > vocab:
        raise ValueError(f"k must be in 1..{vocab} (the vocabulary size), got {k}")
    d = disc.d.clone()
    key = d.clone() if preset == "paper" else disc.p_aligned.clone()
    if exclude:
        key[torch.as_tensor(list(exclude), dtype=torch.long)] = -float("inf")
    if preset == "paper":
        ids = torch.topk(key, k).indices
        ids = ids[torch.argsort(d[ids], descending=True)]
        weights = d[ids].clamp_min(1e-12)
    elif preset == "reference-code":
        ids = torch.topk(key, k).indices
        ids = ids[torch.argsort(d[ids], descending=True)]
        vals = d[ids]
        std = vals.std() if k > 1 else torch.tensor(1.0, dtype=vals.dtype)
        weights = ((vals - vals.mean()) / (std + 1e-6)).clamp_min(0.0)
    else:
        raise ValueError(f"unknown preset {preset!r}; use paper or reference-code")
    return ids, d[ids], weights
