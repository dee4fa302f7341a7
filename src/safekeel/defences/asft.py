"""`asft`: AsFT (Yang et al. 2025, "AsFT: Anchoring Safety During LLM Fine-Tuning Within Narrow Safety
Basin", arXiv:2506.08473, AAAI 2026; authors' code: PKU-YuanGroup/AsFT, `utils/AsFT_train_utils.py`
`train` and `AsFT_finetuning.py` `SafeLoRA.get_aligned_matrix`).

The update's component orthogonal to the alignment direction is penalised, summed over the adapted
layers and added to the task loss:

    L = CE + λ Σ_layers ‖(I − C) ΔW‖²_F,   C = V Vᵀ / ‖V‖_F,   V = W_aligned − W_base   (alignment_subspace.py)

with ΔW = B A for LoRA (B [out, r], A [r, in]) and, here also, ΔW = W − W_aligned for full fine-tuning
(the authors' code regularises LoRA only). The projection multiplies from the left (the output side) and
the squared Frobenius norm is summed over layers, as in the authors' loop; λ = 1 in all their scripts
(`--lambda_reg 1`). Their loop adds the term to every micro-batch's loss without dividing it by the
gradient accumulation (so k accumulated micro-batches count it k times); their scripts all accumulate 1,
i.e. the term once per optimizer step, which is what `step_loss` does whatever the accumulation.

Differences from the authors' code (same value except where V = 0): ‖(I − C) B A‖² is computed as
Σ (Xᵀ X) ⊙ (A Aᵀ) with X = B − C B [out, r] (r × r Grams, never the dense [out, out] I − C or the
[out, in] ΔW); C is kept as V with ‖V‖_F where out > in; layers are matched to C by name; a layer with
V = 0 gets C = 0 (the authors divide 0 by 0, giving NaN), so its whole update is penalised, ‖ΔW‖².
`--asft-lora-scaling on` penalises the update the model applies, (α/r) B A, instead of the authors' B A
(the penalty grows by (α/r)²). C is not an orthogonal projector (eigenvalues σ_i² / ‖V‖_F), so an
update along V is penalised too unless V's singular values make C one; the paper's method section could
not be read here: the formula follows the code, whose README describes it the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from safekeel.defences.alignment_subspace import (
    AlignmentMatrix,
    build_alignment,
    check_supported,
    lora_factors,
    lora_layers,
    match_layers,
    target_linear_names,
)
from safekeel.defences.base import Defence, DefenceOptions, TrainContext
from safekeel.errors import SafekeelError


@dataclass
class AsFTOptions(DefenceOptions):
    asft_lambda: float = field(default=1.0, metadata={
        "help": "weight λ of Σ ‖(I − C) ΔW‖² (the authors' scripts' --lambda_reg)"})
    asft_lora_scaling: bool = field(default=False, metadata={
        "help": "penalise the applied LoRA update (α/r)·B A instead of the authors' B A"})

    def finalize(self) -> None:
        if self.asft_lambda < 0:
            raise SafekeelError(f"--asft-lambda must be >= 0, got {self.asft_lambda}")


def lora_penalty(mat: AlignmentMatrix, a, b, scaling: float = 1.0):
    """‖(I − C) s B A‖²_F (scalar, float32, with graph to a [r, in] and b [out, r]) as
    s² Σ (Xᵀ X) ⊙ (A Aᵀ), X = B − C B [out, r]."""
    a32, b32 = a.float(), b.float()
    x = b32 - mat.apply(b32)
    return scaling ** 2 * ((x.T @ x) * (a32 @ a32.T)).sum()


@functools.cache
def _dense_penalty_fn():
    import torch

    class DensePenalty(torch.autograd.Function):
        """‖(I − C)(W − W0)‖²_F; the backward recomputes the residual instead of keeping [out, in]
        float32 tensors per layer: d/dW = 2 (I − C)ᵀ (I − C)(W − W0), and C is symmetric."""

        @staticmethod
        def forward(ctx, w, w0, mat):
            ctx.save_for_backward(w, w0)
            ctx.mat = mat
            d = w.detach().float() - w0.float()
            r = d - mat.apply(d)
            return (r * r).sum()

        @staticmethod
        def backward(ctx, grad):
            w, w0 = ctx.saved_tensors
            d = w.detach().float() - w0.float()
            r = d - ctx.mat.apply(d)
            return (2 * grad * (r - ctx.mat.apply(r))).to(w.dtype), None, None

    return DensePenalty


def dense_penalty(mat: AlignmentMatrix, w, w0):
    """‖(I − C)(W − W0)‖²_F with graph to w [out, in] (full fine-tuning; w0 the aligned weight)."""
    return _dense_penalty_fn().apply(w, w0, mat)


class AsFT(Defence):
    name = "asft"
    summary = ("λ Σ ‖(I − C) ΔW‖² once per optimizer step: penalise the update off the alignment direction "
               "(C = V Vᵀ/‖V‖_F, V = W_aligned − W_base)")
    paper = "Yang et al. 2025, AsFT: Anchoring Safety During LLM Fine-Tuning Within Narrow Safety Basin (arXiv:2506.08473)"
    options_class = AsFTOptions
    multi_gpu = "DDP"
    sharded = False  # reads and edits whole layer weights

    def needs(self) -> dict[str, str]:
        return {"base": "the unaligned counterpart of --model: AsFT's V = W_aligned − W_base"}

    def check(self, cfg) -> None:
        super().check(cfg)
        check_supported(cfg, self.name)

    def setup(self, ctx: TrainContext) -> None:
        import torch

        names = target_linear_names(ctx.model, ctx.config.lora.lora_target_modules)
        # used every step: on the training device; bfloat16 models keep C in bfloat16 (same range as float32)
        dtype = torch.bfloat16 if next(ctx.model.parameters()).dtype == torch.bfloat16 else torch.float32
        self.matrices = build_alignment(ctx, names, device=ctx.device, dtype=dtype)
        self.full = bool(ctx.config.lora.full)
        self.anchor = {}
        if self.full:  # ΔW = W − W_aligned needs the aligned weights once training moves them
            self.anchor = {n: m.weight.detach().clone() for n, m in ctx.model.named_modules() if n in self.matrices}

    def configure_model(self, model):
        if self.full:
            modules = dict(model.named_modules())
            self.layers = {n: modules[n] for n in self.matrices}
        else:
            self.layers = lora_layers(model)
            match_layers(self.layers, self.matrices, self.name)
            self.matrices = {n: self.matrices[n] for n in self.layers}  # drop layers PEFT did not adapt
        if not self.layers:
            raise SafekeelError(f"--method {self.name}: no layer to regularise (check --lora-target-modules)")
        return model

    def penalty(self):
        """Σ_layers ‖(I − C) ΔW‖²_F (float32 scalar, with graph), before λ."""
        import torch

        terms = []
        for name, layer in self.layers.items():
            mat = self.matrices[name]
            if self.full:
                terms.append(dense_penalty(mat, layer.weight, self.anchor[name]))
            else:
                a, b, s = lora_factors(layer)
                terms.append(lora_penalty(mat, a, b, s if self.options.asft_lora_scaling else 1.0))
        return torch.stack(terms).sum()

    def step_loss(self, model, state):
        return self.options.asft_lambda * self.penalty()
