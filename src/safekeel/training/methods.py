"""Training methods behind a registry (DESIGN §4): one small class each, with optional hooks.

A method sees the step after the trainer has run the fine-tuned model and computed the cross-entropy:
- `prepare(ctx)`: before training (validate and load what it needs: safety tokens, weights);
- `loss(step) -> (extra, stats)`: `extra` is a scalar *sum over the batch's answer positions* (already
  multiplied by the method's coefficient) that the trainer adds to the CE sum before normalising by the
  number of answer tokens; `stats` maps a log name to per-row (sum [B], count [B]) for the logs.

Adding a method = one class here + one line in `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from safekeel.errors import SafekeelError
from safekeel.losses import full_vocab_kl, pact_kl
from safekeel.training.config import PactOptions


@dataclass
class MethodContext:
    """What `prepare` may use: safety tokens (already cut to top K) and the device."""

    tokens: object | None  # SafetyTokens
    device: torch.device


@dataclass
class StepState:
    """One micro-batch. Answer frame [B, A]: column t = answer position t of each row (collate.py)."""

    batch: dict
    logits: Tensor  # [B, L - logits_start, V] fine-tuned logits (with graph) from column logits_start on
    mask: Tensor  # [B, A] bool
    ft_k: Tensor | None  # [B, A, K] fine-tuned logits on S (with graph), None without tokens
    ft_lse: Tensor | None  # [B, A] fine-tuned full-vocabulary log-sum-exp (with graph)
    safety_refs: Callable[[bool], dict] | None  # need_lse -> {"ref_full", "ref_post", "ref_lse"?} [B, A, (K)]
    full_refs: Callable[[], Tensor] | None  # -> reference logits [B, A, V] at the answer positions
    logits_start: int = 0  # the input column of logits[:, 0]


class Method:
    name = "base"
    needs_tokens = False

    def __init__(self, options: PactOptions):
        self.options = options

    @property
    def reference(self) -> str | None:
        """None (no reference), "safety" (K-logits of both views) or "full" (full-vocabulary logits)."""
        return None

    def prepare(self, ctx: MethodContext) -> None:
        if self.needs_tokens and ctx.tokens is None:
            raise SafekeelError(f"--method {self.name} needs --tokens")

    def loss(self, step: StepState) -> tuple[Tensor, dict]:
        return step.logits.new_zeros(()), {}


class SFT(Method):
    """Plain supervised fine-tuning: cross-entropy on the answer tokens only."""

    name = "sft"


def _row_sum(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return torch.where(mask, x, torch.zeros_like(x)).sum(1), mask.sum(1).to(x.dtype)


class FullKL(Method):
    """The `kl` baseline: λ · KL(p_ref || p_ft) over the full vocabulary at every answer position."""

    name = "kl"

    @property
    def reference(self):
        return "full"

    def loss(self, step: StepState) -> tuple[Tensor, dict]:
        o, mask = self.options, step.mask
        from safekeel.training.reference import gather_frame

        ft = gather_frame(step.logits, (step.batch["answer_index"] - step.logits_start).clamp(min=0))  # [B, A, V]
        ref = step.full_refs()
        kl = full_vocab_kl(ft, ref, mask, temperature=o.temperature)
        n = mask.sum()
        with torch.no_grad():  # per-row values for the harmful / benign split of the logs
            rows = torch.stack([full_vocab_kl(ft[b:b + 1].detach(), ref[b:b + 1], mask[b:b + 1], o.temperature)
                                for b in range(mask.shape[0])])
            counts = mask.sum(1).to(rows.dtype)
        return o.lambda_kl * kl * n, {"kl": (rows * counts, counts)}


class Pact(Method):
    """PACT (paper §3): λ · L_KL^safety on the K safety tokens, with weights, calibration and decay."""

    name = "pact"
    needs_tokens = True

    @property
    def reference(self):
        return "full" if self.options.kl_scope == "full" else "safety"

    def prepare(self, ctx: MethodContext) -> None:
        if self.options.kl_scope == "full":
            return
        super().prepare(ctx)
        w = ctx.tokens.weights_tensor(ctx.device)
        if self.options.weights and (bool((w < 0).any()) or not bool((w > 0).any())):
            raise SafekeelError("the safety-token weights must be >= 0 with at least one > 0 (or use --weights off)")
        self.weights = w if self.options.weights else None

    def loss(self, step: StepState) -> tuple[Tensor, dict]:
        o = self.options
        if o.kl_scope == "full":
            return FullKL(o).loss(step)
        need_lse = bool(o.safety_mass)
        refs = step.safety_refs(need_lse)
        kl, stats = pact_kl(
            step.ft_k, refs["ref_full"], refs["ref_post"] if o.calibration else None, self.weights, step.mask,
            n=o.n, tau=o.tau, threshold=o.threshold, calibrate=o.calibration, decay=o.decay,
            temperature=o.temperature, gate_scale=o.gate_scale, gate_bias=o.gate_bias, use_weights=o.weights,
            ref_lse=refs.get("ref_lse"), ft_lse=step.ft_lse if "ref_lse" in refs else None,
            safety_mass=o.safety_mass, return_stats=True)
        counts = step.mask.sum(1).to(kl.dtype)
        out = {"kl": (stats["kl_per_row"] * counts, counts)}
        if o.calibration:
            first = step.mask & (torch.arange(step.mask.shape[1], device=step.mask.device) < o.n)
            n_first = first.sum(1).to(kl.dtype)
            out["gate_first_n"] = (stats["gate_first_n_per_row"] * n_first, n_first)
        if "ref_lse" in refs:
            with torch.no_grad():
                mass = (torch.logsumexp(refs["ref_full"].float(), -1) - refs["ref_lse"].float()).clamp(max=0).exp()
            out["safety_mass_ref"] = _row_sum(mass, step.mask)
        return o.lambda_kl * kl * step.mask.sum(), out


METHODS: dict[str, type[Method]] = {"sft": SFT, "kl": FullKL, "pact": Pact}


def get_method(name: str, options: PactOptions) -> Method:
    if name not in METHODS:
        raise SafekeelError(f"unknown method {name!r}; choose {', '.join(METHODS)}")
    return METHODS[name](options)
