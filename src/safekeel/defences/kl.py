"""`kl`: the full-vocabulary KL baseline, λ · KL(p_ref ‖ p_ft) at every answer position.

The reference is the model before fine-tuning (LoRA: the same model with adapters off; `--full`: a
frozen copy), computed live. `losses.full_vocab_kl` holds the math (docs/design.md, "Formulas").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safekeel.defences.base import Defence, DefenceOptions, LossTerms, StepState


@dataclass
class KLOptions(DefenceOptions):
    lambda_kl: float = field(default=3.0, metadata={"help": "weight λ of the KL term", "aliases": ["--lambda"]})
    temperature: float = field(default=1.0, metadata={"help": "KL temperature T (logits / T, times T²)"})

    def finalize(self) -> None:
        _check_lambda_temperature(self)


def _check_lambda_temperature(o) -> None:
    from safekeel.errors import SafekeelError

    if o.lambda_kl < 0:
        raise SafekeelError(f"--lambda must be >= 0, got {o.lambda_kl}")
    if o.temperature <= 0:
        raise SafekeelError(f"--temperature must be > 0, got {o.temperature}")


def full_kl_terms(step: StepState, lambda_kl: float, temperature: float) -> LossTerms:
    """λ · Σ_positions KL(p_ref ‖ p_ft) as the extra term, with per-row KL means for the logs."""
    import torch

    from safekeel.losses import full_vocab_kl

    mask = step.mask
    ft = step.answer_logits()  # [B, A, V]
    ref = step.full_refs()  # [B, A, V]
    kl = full_vocab_kl(ft, ref, mask, temperature=temperature)
    with torch.no_grad():  # per-row values for the harmful / benign split of the logs
        rows = torch.stack([full_vocab_kl(ft[b:b + 1].detach(), ref[b:b + 1], mask[b:b + 1], temperature)
                            for b in range(mask.shape[0])])
        counts = mask.sum(1).to(rows.dtype)
    return LossTerms(extra=lambda_kl * kl * mask.sum(), stats={"kl": (rows * counts, counts)})


class FullKL(Defence):
    name = "kl"
    summary = "λ · KL(p_ref ‖ p_ft) over the full vocabulary at every answer position (the naive constraint)"
    paper = "Wang et al. 2026, PACT (arXiv:2603.07445), Table 5 first rung"
    options_class = KLOptions
    multi_gpu = "DDP (live reference)"

    @property
    def reference(self):
        return "full"

    def loss(self, step: StepState) -> LossTerms:
        return full_kl_terms(step, self.options.lambda_kl, self.options.temperature)
