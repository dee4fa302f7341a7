"""`safegrad`: gradient surgery against a safety batch (seed 002, "SafeGrad: Gradient Surgery for Safe
Fine-Tuning"; the method of Yi et al. 2025, "Gradient Surgery for Safe LLM Fine-Tuning", arXiv:2508.07172,
in the PCGrad form of Yu et al. 2020, arXiv:2001.06782).

Once per optimizer step, on the accumulated task gradient g (all trainable parameters as one flattened
vector) and the gradient g_s of the cross-entropy of a batch of safety data (harmful prompts with
refusals, `--safety-data`):

    g ← g − (g·g_s / ‖g_s‖²) g_s    if g·g_s < 0 (the task step would raise the safety loss)
    g ← g                            otherwise (bit for bit: .grad is not touched)

so the step no longer has a component that raises the safety loss to first order (g'·g_s = 0). It runs
in `before_optimizer_step`: after the last micro-batch's backward (and DDP's all-reduce), before
clipping, so gradient accumulation sees the edit once and clipping applies to the edited gradient.

Sources and where they differ (no code of Yi et al. was found; this follows the seed and the paper's
abstract): the seed's formula and snippet project *unconditionally* and *per parameter tensor*; the
paper (and PCGrad) project only "when a conflict is detected". Default here: the paper/PCGrad rule on the
whole flattened gradient; the seed's snippet is `--safegrad-scope per-tensor --safegrad-when always`.
The paper's alignment gradient is that of a KL to the aligned model's distribution on the safety
prompts; here (as the seed) it is the CE of the safety refusals. The abstract frames the method as
multi-objective and says the alignment loss is "learned", so the paper likely also descends on it; how
its gradient enters the update could not be checked (paper body and code not available here): here the
safety data only steers the projection (no descent on it, as in the seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from safekeel.defences.base import Defence, DefenceOptions
from safekeel.defences.inputs import SAFETY_DATA_HELP, safety_rows
from safekeel.errors import SafekeelError


@dataclass
class SafeGradOptions(DefenceOptions):
    safegrad_batch_size: int | None = field(default=None, metadata={
        "help": "safety rows per safety gradient (None: --per-device-train-batch-size)"})
    safegrad_scope: str = field(default="global", metadata={
        "choices": ["global", "per-tensor"],
        "help": "global: one projection of the whole flattened gradient (PCGrad); per-tensor: each parameter "
                "tensor projected on its own safety gradient (the seed's snippet)"})
    safegrad_when: str = field(default="conflict", metadata={
        "choices": ["conflict", "always"],
        "help": "conflict: project only when g·g_s < 0 (the paper, PCGrad); always: remove the g_s component "
                "every step (the seed's formula)"})

    def finalize(self) -> None:
        if self.safegrad_batch_size is not None and self.safegrad_batch_size <= 0:
            raise SafekeelError(f"--safegrad-batch-size must be positive, got {self.safegrad_batch_size}")
        if self.safegrad_scope not in ("global", "per-tensor"):
            raise SafekeelError(f"--safegrad-scope must be global or per-tensor, got {self.safegrad_scope!r}")
        if self.safegrad_when not in ("conflict", "always"):
            raise SafekeelError(f"--safegrad-when must be conflict or always, got {self.safegrad_when!r}")


def surgery(task: list, safety: list, scope: str = "global", when: str = "conflict") -> tuple[list, dict]:
    """The edited gradients of one optimizer step. task, safety: per parameter tensor, same shapes (None =
    zero). Returns (edited, info): edited[i] is the new gradient (float32) or None where tensor i is left
    as it is; info {"cos": cosine of g and g_s over all tensors, "projected": share of projections made}.
    Dot products in float32; a zero (or non-finite) ‖g_s‖² leaves the gradient unchanged."""
    import torch

    pairs = [(t, s) for t, s in zip(task, safety, strict=True)]
    ref = next((x for pair in pairs for x in pair if x is not None), None)
    if ref is None:
        return [None] * len(pairs), {"cos": 0.0, "projected": 0.0}
    zero = torch.zeros((), dtype=torch.float32, device=ref.device)
    dots = [(t.float() * s.float()).sum() if t is not None and s is not None else zero for t, s in pairs]
    gg = [t.float().square().sum() if t is not None else zero for t, _ in pairs]
    ss = [s.float().square().sum() if s is not None else zero for _, s in pairs]
    dot, g2, s2 = torch.stack(dots).sum(), torch.stack(gg).sum(), torch.stack(ss).sum()
    cos = float(dot / (g2.sqrt() * s2.sqrt())) if float(g2) > 0 and float(s2) > 0 else 0.0
    if scope == "global":  # one coefficient for the whole flattened vector
        d, n2, members = dot[None], s2[None], [list(range(len(pairs)))]
    else:  # each tensor against its own safety gradient
        d, n2, members = torch.stack(dots), torch.stack(ss), [[i] for i in range(len(pairs))]
    act = (n2 > 0) & torch.isfinite(n2) & ((d < 0) if when == "conflict" else torch.ones_like(d, dtype=torch.bool))
    coefs = torch.where(act, d / torch.where(act, n2, torch.ones_like(n2)), torch.zeros_like(d))
    edited: list = [None] * len(pairs)
    for group, on, coef in zip(members, act.tolist(), coefs.tolist(), strict=True):  # one sync for all
        if not on:
            continue
        for i in group:
            t, s = pairs[i]
            if s is None:
                continue  # no safety component there: unchanged
            base = t.float() if t is not None else torch.zeros_like(s, dtype=torch.float32)
            edited[i] = base - coef * s.float()
    return edited, {"cos": cos, "projected": float(act.float().mean())}


def unwrap(model):
    """The module under DistributedDataParallel (the safety forward must not go through DDP's hooks)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def mean_over_ranks(tensors: list) -> list:
    """Average gradients over DDP ranks (every rank used the same safety batch; this makes the edit
    bit-identical across ranks even with non-deterministic kernels). Identity without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    out = []
    for t in tensors:  # a None (parameter unused by the safety loss) is None on every rank
        if t is not None:
            t = t.detach().clone()
            dist.all_reduce(t)
            t = t / world
        out.append(t)
    return out


class SafeGrad(Defence):
    name = "safegrad"
    summary = ("gradient surgery: when the task gradient conflicts with the gradient of a safety batch (g·g_s < 0), "
               "remove its g_s component before the optimizer step")
    paper = "seed 002 (SafeGrad); Yi et al. 2025, Gradient Surgery for Safe LLM Fine-Tuning (arXiv:2508.07172)"
    options_class = SafeGradOptions
    optional_inputs: ClassVar[dict[str, str]] = {"safety_data": SAFETY_DATA_HELP}
    multi_gpu = "DDP (same safety batch on every rank, its gradient averaged over ranks)"
    sharded = False  # needs whole parameters and gradients

    def setup(self, ctx) -> None:
        rows = list(safety_rows(ctx))
        if not rows:
            raise SafekeelError("--method safegrad: the safety data has no rows")
        # one fixed shuffle (the run's seed), then batch k of it at optimizer step k mod n: resumes see the same
        random.Random(int(ctx.config.training.get("seed", 42))).shuffle(rows)
        size = self.options.safegrad_batch_size or int(getattr(ctx.args, "per_device_train_batch_size", 4) or 4)
        self.batches = ctx.batches(rows, size)

    def safety_gradient(self, model, step: int) -> tuple[list, float]:
        """(g_s per trainable parameter of the unwrapped model (None where unused), safety CE) on batch
        `step` mod n: the mean answer-token CE of the safety batch, gradients by autograd (no .grad touched)."""
        import torch

        from safekeel.losses import answer_ce

        params = [p for p in model.parameters() if p.requires_grad]
        batch = self.batches[step % len(self.batches)]
        with torch.enable_grad():
            ce = answer_ce(model, batch)  # [B, A]
            loss = ce.sum() / batch["answer_mask"].sum().clamp_min(1)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return mean_over_ranks(list(grads)), float(loss.detach())

    def before_optimizer_step(self, model, optimizer, state) -> dict:
        net = unwrap(model)
        params = [p for p in net.parameters() if p.requires_grad]
        g_s, safety_ce = self.safety_gradient(net, state.global_step)
        edited, info = surgery([p.grad for p in params], g_s, self.options.safegrad_scope,
                               self.options.safegrad_when)
        for p, g in zip(params, edited, strict=True):
            if g is None:
                continue
            if p.grad is None:  # no task gradient there: the projection gives it −c·g_s
                p.grad = g.to(p.dtype)
            else:
                p.grad.copy_(g)
        return {"safegrad_cos": info["cos"], "safegrad_projected": info["projected"], "safegrad_safety_ce": safety_ce}
