"""`constrained_sft`: the token-wise constrained objective of Qi et al. 2024, "Safety Alignment Should Be
Made More Than Just a Few Tokens Deep" (arXiv:2406.05946, Eq. 3; the authors' code is
Unispac/shallow-vs-deep-alignment, `ConstrainedSFTTrainer.soft_sft_loss`).

Objective, per answer token t with Δ_t = log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t):

    L = mean_t  −(2 / β_t) · log σ(β_t · Δ_t)

Its gradient is the cross-entropy's times w_t = 2 (1 − σ(β_t Δ_t)) (the paper's Appendix D.2): a token
the model already predicts better than the aligned reference stops pulling (w → 0), one it predicts
worse pulls up to twice as hard as in SFT. Like the authors' code, the loss is the per-token CE times
the detached weight, clamped below at `min_weight` (1e-3), so the gradient is the objective's and the
CE normalisation stays the trainer's. β_t is position dependent, the authors' `get_beta_list`: β ×
`first_token_bias_factor` at position 0, β × `bias_factor` at positions 1 … `bias_length` − 1, β after
(defaults β 0.1, factors 5 and 20, length 5: the early tokens, where alignment is shallow, are held
hardest). The reference is the model before fine-tuning; its answer-token log-probabilities come live
from the hidden states and each target's head row (LoRA: adapters off, no second copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safekeel.defences.base import Defence, DefenceOptions, LossTerms, StepState, row_sum
from safekeel.errors import SafekeelError


@dataclass
class ConstrainedSFTOptions(DefenceOptions):
    beta: float = field(default=0.1, metadata={"help": "β of the sigmoid after the first bias-length answer tokens"})
    bias_length: int = field(default=5, metadata={"help": "answer positions with the larger β"})
    bias_factor: float = field(default=20.0, metadata={"help": "β × this at positions 1 … bias-length − 1"})
    first_token_bias_factor: float = field(default=5.0, metadata={"help": "β × this at position 0"})
    min_weight: float = field(default=1e-3, metadata={"help": "lower clamp of the per-token weight (authors' code)"})

    def finalize(self) -> None:
        if self.beta <= 0:
            raise SafekeelError(f"--beta must be > 0, got {self.beta}")
        if self.bias_length < 0:
            raise SafekeelError(f"--bias-length must be >= 0, got {self.bias_length}")
        if self.bias_factor <= 0 or self.first_token_bias_factor <= 0:
            raise SafekeelError("--bias-factor and --first-token-bias-factor must be > 0")
        if not 0 <= self.min_weight <= 2:
            raise SafekeelError(f"--min-weight must be in [0, 2], got {self.min_weight}")


def beta_schedule(length: int, o: ConstrainedSFTOptions):
    """β_t for answer positions 0 … length − 1 [length] (the authors' `get_beta_list`)."""
    import torch

    beta = torch.full((length,), float(o.beta))
    n = min(o.bias_length, length)
    beta[:n] = o.beta * o.bias_factor
    if n > 0:
        beta[0] = o.beta * o.first_token_bias_factor
    return beta


def token_weights(policy_logp, ref_logp, mask, o: ConstrainedSFTOptions):
    """w_t = max(2 (1 − σ(β_t (log π − log π_ref))), min_weight) [B, A], detached; 0 off the mask.
    policy_logp, ref_logp: [B, A] log-probabilities of the answer tokens."""
    import torch

    beta = beta_schedule(mask.shape[1], o).to(policy_logp.device)  # [A]
    delta = policy_logp.detach().float() - ref_logp.float()
    w = (2 * (1 - torch.sigmoid(beta * delta))).clamp(min=o.min_weight)
    return torch.where(mask, w, torch.zeros_like(w))


class ConstrainedSFT(Defence):
    name = "constrained_sft"
    summary = ("token-wise constrained SFT: CE weighted by 2(1 − σ(β_t (log π − log π_ref))), "
               "β largest on the first answer tokens")
    paper = "Qi et al. 2024, Safety Alignment Should Be Made More Than Just a Few Tokens Deep (arXiv:2406.05946)"
    options_class = ConstrainedSFTOptions
    multi_gpu = "DDP (live reference)"

    @property
    def reference(self):
        return "target"

    def loss(self, step: StepState) -> LossTerms:
        ref = step.target_refs()  # [B, A]
        w = token_weights(-step.ce, ref, step.mask, self.options)
        delta = (-step.ce.detach() - ref).float()
        return LossTerms(token_weights=w, stats={"cs_weight": row_sum(w, step.mask),
                                                 "cs_logratio": row_sum(delta, step.mask)})
