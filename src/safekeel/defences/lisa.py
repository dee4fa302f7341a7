"""`lisa`: Lazy Safety Alignment, Huang et al. 2024, "Lisa: Lazy Safety Alignment for Large Language Models
against Harmful Fine-tuning Attack" (NeurIPS 2024, https://arxiv.org/abs/2405.18641; the authors' code is
git-disl/Lisa: `LisaTrainer` in trainer.py, run by script/finetune/lisa_poison_ratio.sh).

Bi-state optimisation with a proximal term. Optimizer steps run in cycles of K = A + F steps: the first
A of each cycle are *alignment* steps on the safety data (`--safety-data`: harmful prompts with
refusals), the other F *fine-tuning* steps on the user's data. Step s (0-based) is an alignment step
iff A > 0 and s mod K < A: the authors' `check_mode` (a status and a clock) reduces to exactly this
(tests/test_lisa.py runs a literal copy of it). In both states the loss gets, once per optimizer step,

    ρ/2 · Σ_i ‖θ_i − θ̃_i‖²        θ: the trainable parameters (the LoRA factors; every weight with --full)

with θ̃ the weights at the last state switch, i.e. the last iterate of the *other* state (the initial
weights until the first switch), taken at the start of the first step of the new state. This is the
authors' `switch_model` (it runs after the status flip, so entering the alignment state refreshes
`finetune_weights`, the alignment state's anchor, and vice versa). Their README's snippet names the two
anchors the other way round; the code, which produced the paper's numbers, is followed here.

Presets (`--preset`):
- `paper`: the proximal term from the first step (the method as described, and the README's snippet).
- `reference-code`: as the authors' training loop, no proximal term while step ≤ 0.1 · (planned steps)
  (their comment: it "will downgrade benign accuracy"; `--lisa-proximal-warmup 0.1`).
Both use the authors' script's ρ = 1 (`RHO=1`; their argparse default is 0.1) and A = 100, F = 900
(`align_step`, `finetune_step`; argparse defaults 500/500).

Where this differs from the authors' code: the term is added once per optimizer step (they add it per
micro-batch, with gradient accumulation 1 in their scripts: the same); on an alignment step their loop
throws away the user batch it drew, here the user's stream just continues (no user row is skipped);
their alignment data is BeaverTails' safe rows, here `--safety-data` (default: the model's own refusals).
Like theirs, every step (alignment steps included) counts towards --max-steps and the epoch length,
which is the user's data's step count; the optimizer and its state are shared by the two states.

Resume: θ̃ is written into every checkpoint (`lisa_anchor.safetensors`, with the switch step it belongs
to) and read back on `--resume`, unless the resumed step is itself a switch (then θ̃ is the loaded weights).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from safekeel.defences.base import DataPlan, Defence, DefenceOptions, LossTerms, StepState
from safekeel.defences.inputs import SAFETY_DATA_HELP, safety_rows, trainable_parameters
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

ANCHOR_FILE = "lisa_anchor.safetensors"


@dataclass
class LisaOptions(DefenceOptions):
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {"lisa_proximal_warmup": 0.0},
                                          "reference-code": {"lisa_proximal_warmup": 0.1}}
    preset: str = field(default="paper", metadata={
        "choices": ["paper", "reference-code"],
        "help": "paper: the proximal term from the first step; reference-code: the authors' code (none in the "
                "first 10% of the steps)"})
    lisa_rho: float = field(default=1.0, metadata={
        "help": "proximal intensity ρ of ρ/2‖θ − θ̃‖², θ̃ the weights at the last switch (0: plain alternation)"})
    lisa_alignment_steps: int = field(default=100, metadata={
        "help": "alignment steps on --safety-data at the start of each cycle (0: no alignment state)"})
    lisa_finetune_steps: int = field(default=900, metadata={"help": "fine-tuning steps on the user's data per cycle"})
    lisa_proximal_warmup: float = field(default=0.0, metadata={
        "help": "share of the planned steps trained without the proximal term (--preset reference-code, the "
                "authors' code, sets 0.1)"})

    def finalize(self) -> None:
        if self.lisa_rho < 0:
            raise SafekeelError(f"--lisa-rho must be >= 0, got {self.lisa_rho}")
        if self.lisa_alignment_steps < 0:
            raise SafekeelError(f"--lisa-alignment-steps must be >= 0, got {self.lisa_alignment_steps}")
        if self.lisa_finetune_steps < 1:
            raise SafekeelError(f"--lisa-finetune-steps must be >= 1 (the user's data must train), got "
                                f"{self.lisa_finetune_steps}")
        if not 0 <= self.lisa_proximal_warmup < 1:
            raise SafekeelError(f"--lisa-proximal-warmup must be in [0, 1), got {self.lisa_proximal_warmup}")


# -- the schedule and the term (pure) ------------------------------------------------------------------
def is_alignment_step(step: int, alignment_steps: int, finetune_steps: int) -> bool:
    """Whether optimizer step `step` (0-based) is in the alignment state: the first A steps of each cycle."""
    return alignment_steps > 0 and step % (alignment_steps + finetune_steps) < alignment_steps


def last_switch(step: int, alignment_steps: int, finetune_steps: int) -> int:
    """The step at which the state of `step` began (0 before the first switch): θ̃ is the weights then."""
    if alignment_steps <= 0:
        return 0  # one state throughout, anchored at the initial weights (the authors' code does the same)
    cycle = step - step % (alignment_steps + finetune_steps)
    return cycle if is_alignment_step(step, alignment_steps, finetune_steps) else cycle + alignment_steps


def proximal_active(step: int, max_steps: int, warmup: float) -> bool:
    """The authors' `self.steps > 0.1 * (planned steps)` with 0.1 = `warmup`; always on without warm-up."""
    return warmup <= 0 or step > warmup * max_steps


def proximal_term(params: list, anchors: list, rho: float):
    """ρ/2 · Σ_i ‖θ_i − θ̃_i‖² (scalar, at least float32) whose gradient ρ (θ_i − θ̃_i) reaches each parameter θ_i.
    params: the trainable tensors; anchors: same shapes, no gradient. Computed without keeping θ − θ̃
    for the backward (one parameter's difference at a time), so --full costs no extra copy of the model."""
    import torch

    def diff(p, a):  # θ − θ̃ in at least float32 (bf16 weights would round the small differences away)
        wide = torch.promote_types(p.dtype, torch.float32)
        return p.to(wide) - a.to(wide)

    class Proximal(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *tensors):
            ctx.save_for_backward(*tensors)
            n = len(tensors) // 2
            return sum(diff(p, a).pow(2).sum() for p, a in zip(tensors[:n], tensors[n:])) * (0.5 * rho)

        @staticmethod
        def backward(ctx, grad):
            tensors = ctx.saved_tensors
            n = len(tensors) // 2
            grads = [(diff(p, a) * (rho * grad)).to(p.dtype) for p, a in zip(tensors[:n], tensors[n:])]
            return (*grads, *([None] * n))

    if not params:
        raise SafekeelError("--method lisa found no trainable parameters")
    return Proximal.apply(*params, *[a.detach() for a in anchors])


# -- the defence -----------------------------------------------------------------------------------------
class Lisa(Defence):
    name = "lisa"
    summary = ("Lisa: alternate alignment steps on the safety data with fine-tuning steps, each state pulled "
               "towards the weights at the last switch (ρ/2‖θ − θ̃‖²)")
    paper = "Huang et al. 2024, Lisa: Lazy Safety Alignment (arXiv:2405.18641)"
    options_class = LisaOptions
    optional_inputs: ClassVar[dict[str, str]] = {"safety_data": SAFETY_DATA_HELP}
    multi_gpu = "DDP"
    sharded = False  # reads and copies the whole trainable parameters every step

    def __init__(self, options=None):
        super().__init__(options)
        self.params: list = []  # [(name, parameter)] the trainable parameters, in a fixed order
        self.anchor: list | None = None  # θ̃, one tensor per parameter
        self.anchor_step: int | None = None  # the step at whose start θ̃ was taken (a switch, or 0)
        self.resume_dirs: list[Path] = []  # where a resumed run's checkpoint may be
        self._started = False

    @property
    def _steps(self) -> tuple[int, int]:
        return self.options.lisa_alignment_steps, self.options.lisa_finetune_steps

    def setup(self, ctx) -> None:
        resume = getattr(ctx.config, "resume", None)
        self.resume_dirs = [Path(resume)] if isinstance(resume, str) else []
        self.resume_dirs += [Path(ctx.output_dir or getattr(ctx.config, "output_dir", "."))]

    def data_plan(self, ctx) -> DataPlan | None:
        a, f = self._steps
        if a == 0:
            return None  # no alignment state: the user's data only (the safety data is not even loaded)
        return DataPlan(sources={"safety": safety_rows(ctx)},
                        schedule=lambda step: "safety" if is_alignment_step(step, a, f) else "main")

    def configure_model(self, model):
        self.params = list(trainable_parameters(model).items())
        if self.options.lisa_rho > 0:  # θ̃ before the first switch: the weights training starts from
            self.anchor, self.anchor_step = [p.detach().clone() for _, p in self.params], 0
        return model

    def callbacks(self) -> list:
        from transformers import TrainerCallback

        lisa = self

        class SaveAnchor(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if state.is_world_process_zero and lisa.anchor is not None and folder.is_dir():
                    lisa.save_anchor(folder, state.global_step)

        return [SaveAnchor()]

    def loss(self, step: StepState) -> LossTerms:
        rows = step.mask.shape[0]
        flag = float(step.source == "safety")
        ones = step.ce.new_ones(rows)
        return LossTerms(stats={"lisa_alignment": (ones * flag, ones)})

    def step_loss(self, model, state):
        import torch

        o = self.options
        if o.lisa_rho == 0:
            return None
        step = state.global_step
        switch = last_switch(step, *self._steps)
        if not self._started:  # the first step of this process: a resumed run needs the θ̃ it had
            self._started = True
            if step > 0 and switch < step:
                self.load_anchor(step, switch)
        if switch != self.anchor_step:  # a switch: θ̃ = the weights the other state ended with
            self.anchor, self.anchor_step = [p.detach().clone() for _, p in self.params], step
        if not proximal_active(step, state.max_steps, o.lisa_proximal_warmup):
            return self.anchor[0].new_zeros((), dtype=torch.float32)  # logged as 0 while the term is off
        return proximal_term([p for _, p in self.params], self.anchor, o.lisa_rho)

    # -- θ̃ in checkpoints ----------------------------------------------------------------------------
    def save_anchor(self, folder: Path, global_step: int) -> None:
        from safetensors.torch import save_file

        tensors = {n: a.detach().cpu().contiguous() for (n, _), a in zip(self.params, self.anchor)}
        tmp = folder / f".{ANCHOR_FILE}.tmp"
        save_file(tensors, str(tmp), metadata={"switch_step": str(self.anchor_step), "global_step": str(global_step)})
        os.replace(tmp, folder / ANCHOR_FILE)

    def load_anchor(self, step: int, switch: int) -> None:
        """θ̃ of a run resumed at `step` whose state began at `switch` < step, from the checkpoint's file."""
        from safetensors import safe_open

        for folder in [*self.resume_dirs[:1], *(d / f"checkpoint-{step}" for d in self.resume_dirs)]:
            path = folder / ANCHOR_FILE
            if not path.is_file():
                continue
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("global_step") != str(step) or meta.get("switch_step") != str(switch):
                    continue
                stored = set(f.keys())
                missing = [n for n, _ in self.params if n not in stored]
                if missing:
                    raise SafekeelError(f"--resume: {path} has no Lisa anchor for {missing[0]} (trained with other "
                                        "trainable parameters?)")
                self.anchor = [f.get_tensor(n).to(device=p.device, dtype=p.dtype) for n, p in self.params]
            self.anchor_step = switch
            log.info("lisa: anchor of the switch at step %d read from %s", switch, path)
            return
        if switch == 0:  # θ̃ = the initial weights, rebuilt identically from the model and the seed
            log.warning("lisa: no %s for step %d; using the initial weights as the anchor", ANCHOR_FILE, step)
            return
        raise SafekeelError(f"--resume: the checkpoint of step {step} has no {ANCHOR_FILE} for the Lisa state "
                            f"that began at step {switch}, so its proximal anchor cannot be rebuilt; start over")
