"""`ewc`: Elastic Weight Consolidation towards the aligned weights (seed 002, "EWC for safety"; Kirkpatrick
et al. 2017, "Overcoming catastrophic forgetting in neural networks", arXiv:1612.00796, Eq. 3).

Before training, the diagonal empirical Fisher information of the safety data (harmful prompts with
refusals, `--safety-data`) at the weights before fine-tuning θ*:

    F_i = (1/N) Σ_n (∂ log p_θ*(y_n | x_n) / ∂θ_i)²

over the first N safety examples, one example at a time (per-example squared gradients, not the square of
a batch gradient), log p(y | x) being the summed log-likelihood of the refusal's tokens (the sequence
model's score), the model in eval mode. "Empirical": the observed refusals y_n, not samples of the model.
Then, once per optimizer step (`step_loss`, so gradient accumulation adds it once),

    penalty = (λ / 2) Σ_i F̄_i (θ_i − θ*_i)²,    gradient λ F̄ (θ − θ*),

over the trainable parameters. The seed writes λ Σ F (θ − θ*)² (no ½: its λ is this λ / 2).

Scale: F̄ = F / mean(F) by default (`--ewc-fisher-norm mean`; `max`: F / max(F); `none`: the raw F), so
λ is the strength of an L2 pull towards θ* (L2-SP) for a parameter of average safety importance, which
F̄ redistributes; the raw Fisher's scale depends on the model, the data and the answer lengths. Neither
the seed nor Kirkpatrick et al. give a λ for LLMs; the default 0.1 is our estimate: with LoRA on a ~1B
model a parameter of average importance is held at about ‖g_task‖ / (λ √n) of drift. Sweep it.

LoRA: the trainable parameters are the factors A, B (ΔW = s·B·A, B = 0 at initialisation), so at θ* the
gradient with respect to A is exactly zero and so is its Fisher: the penalty holds B (and through it ΔW)
and leaves A free. `--full`: every weight, at the cost of two extra copies (θ* and F) of the model.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import ClassVar

from safekeel.defences.base import Defence, DefenceOptions
from safekeel.defences.inputs import SAFETY_DATA_HELP, safety_rows, trainable_parameters
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)


@dataclass
class EWCOptions(DefenceOptions):
    ewc_lambda: float = field(default=0.1, metadata={"help": "weight λ of the penalty (λ/2) Σ F̄ (θ − θ*)²"})
    ewc_fisher_examples: int | None = field(default=128, metadata={
        "help": "safety examples the Fisher is estimated on (the first N; None or 0: all)"})
    ewc_fisher_norm: str = field(default="mean", metadata={
        "choices": ["mean", "max", "none"], "help": "divide the Fisher by its mean or its maximum, or keep it raw"})

    def finalize(self) -> None:
        if self.ewc_lambda < 0:
            raise SafekeelError(f"--ewc-lambda must be >= 0, got {self.ewc_lambda}")
        if self.ewc_fisher_examples is not None and self.ewc_fisher_examples < 0:
            raise SafekeelError(f"--ewc-fisher-examples must be >= 0, got {self.ewc_fisher_examples}")
        if self.ewc_fisher_norm not in ("mean", "max", "none"):
            raise SafekeelError(f"--ewc-fisher-norm must be mean, max or none, got {self.ewc_fisher_norm!r}")


def empirical_fisher(model, params: list, batches: list, count: int | None = None) -> list:
    """Diagonal empirical Fisher [per parameter, float32]: the mean over `batches` (one example each) of
    the squared gradient of the example's summed answer-token CE (= −log p(y | x)), divided by `count`
    (default: the number of batches; the total over every rank's share under DDP)."""
    import torch

    from safekeel.losses import answer_ce

    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    with torch.enable_grad():
        for batch in batches:
            nll = answer_ce(model, batch).sum()  # one example: −log p(y | x)
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            for f, g in zip(fisher, grads, strict=True):
                if g is not None:
                    f.add_(g.detach().float().square())
    _sum_over_ranks(fisher)
    count = len(batches) if count is None else count
    return [f / max(count, 1) for f in fisher]


def normalise(fisher: list, how: str) -> list:
    """F / mean(F) or F / max(F) over all entries (or F as is); a zero Fisher stays zero."""
    import torch

    if how == "none" or not fisher:
        return fisher
    total = torch.stack([f.sum() for f in fisher]).sum()
    count = sum(f.numel() for f in fisher)
    scale = total / count if how == "mean" else torch.stack([f.max() for f in fisher if f.numel()]).max()
    if not float(scale) > 0:
        return fisher
    return [f / scale for f in fisher]


def ewc_penalty(params: list, anchors: list, fisher: list, lam: float):
    """(λ / 2) Σ_i F_i (θ_i − θ*_i)², a float32 scalar whose gradient is λ F (θ − θ*) (with graph to
    `params`). A custom autograd function: it saves no [θ]-sized intermediates for the backward (plain
    autograd would keep (θ − θ*) in float32 for every tensor, two model copies under --full)."""
    n = len(params)
    if n == 0:
        import torch

        return torch.zeros(())
    return _penalty_function().apply(float(lam), n, *params, *anchors, *fisher)


@functools.cache
def _penalty_function():
    import torch

    def _up(x):  # at least float32 (float64 stays float64: gradcheck)
        return x.to(torch.promote_types(x.dtype, torch.float32))

    class EWCPenalty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, lam, n, *tensors):
            params, anchors, fisher = tensors[:n], tensors[n:2 * n], tensors[2 * n:]
            ctx.lam, ctx.n = lam, n
            ctx.save_for_backward(*tensors)
            terms = [(_up(f) * (_up(p) - _up(a)).square()).sum() for p, a, f in zip(params, anchors, fisher)]
            return 0.5 * lam * torch.stack([t.to(terms[0].dtype) for t in terms]).sum()

        @staticmethod
        def backward(ctx, grad_out):
            tensors, n = ctx.saved_tensors, ctx.n
            params, anchors, fisher = tensors[:n], tensors[n:2 * n], tensors[2 * n:]
            grads = [(grad_out * ctx.lam * _up(f) * (_up(p) - _up(a))).to(p.dtype)
                     if ctx.needs_input_grad[2 + i] else None
                     for i, (p, a, f) in enumerate(zip(params, anchors, fisher))]
            return (None, None, *grads, *([None] * (2 * n)))

    return EWCPenalty


def _sum_over_ranks(tensors: list) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EWC(Defence):
    name = "ewc"
    summary = ("elastic weight consolidation: (λ/2) Σ F̄ (θ − θ*)² towards the weights before fine-tuning, F̄ the "
               "safety data's diagonal empirical Fisher")
    paper = "seed 002; Kirkpatrick et al. 2017, Overcoming catastrophic forgetting (arXiv:1612.00796)"
    options_class = EWCOptions
    optional_inputs: ClassVar[dict[str, str]] = {"safety_data": SAFETY_DATA_HELP}
    multi_gpu = "DDP (Fisher examples split over ranks and summed)"
    sharded = False  # needs whole parameters and gradients

    def setup(self, ctx) -> None:
        rows = safety_rows(ctx)
        n = self.options.ewc_fisher_examples or len(rows)
        if not rows:
            raise SafekeelError("--method ewc: the safety data has no rows")
        self.ctx, self.rows = ctx, rows[:n]

    def configure_model(self, model):
        """After LoRA wrapping: θ* and the Fisher of the trainable parameters (eval mode, no dropout)."""
        import torch

        named = trainable_parameters(model)
        # references, not names: DDP wrapping and checkpoint loads keep the parameter objects
        self.names, self.params = list(named), list(named.values())
        self.anchors = [p.detach().clone() for p in self.params]
        rank, world = _rank_and_world()
        mine = self.rows[rank::world]  # each rank its share; the sum over ranks is the full sum
        was_training = model.training
        model.eval()
        try:
            fisher = empirical_fisher(model, self.params, self.ctx.batches(mine, 1) if mine else [], len(self.rows))
        finally:
            model.train(was_training)
        fisher = normalise(fisher, self.options.ewc_fisher_norm)
        # bf16 keeps fp32's exponent range (a tiny F is not flushed to 0), at half the memory of fp32
        self.fisher = [f.to(p.dtype) if p.dtype == torch.bfloat16 else f for f, p in zip(fisher, self.params, strict=True)]
        nonzero = sum(int(f.count_nonzero()) for f in self.fisher)
        if nonzero == 0:
            log.warning("ewc: the safety data's Fisher is zero on every trainable parameter: the penalty is 0")
        log.info("ewc: Fisher of %d trainable tensors on %d safety examples (%d nonzero entries)", len(self.params),
                 len(self.rows), nonzero)
        self.last = 0.0
        return model

    def step_loss(self, model, state):
        penalty = ewc_penalty(self.params, self.anchors, self.fisher, self.options.ewc_lambda)
        self.last = float(penalty.detach())
        return penalty

    def before_optimizer_step(self, model, optimizer, state) -> dict:
        return {"ewc_penalty": self.last}  # this step's penalty (step_loss ran on its first micro-batch)
