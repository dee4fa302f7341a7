"""`DefenceLossMixin`: one micro-batch's loss = (weighted) CE on answer tokens + the defence's terms.

Mixed into a transformers `Trainer` subclass: `SafekeelTrainer` (training/trainer.py, what `safekeel
train` runs) and `SafetySFTTrainer` (integrations/trl.py, TRL's `SFTTrainer`). Both run this one copy of
the loss, the optimizer-step hooks and the logged stats, so the two paths cannot drift.

The defence's hooks (defences/base.py) run here: `loss(step)` per micro-batch (CE weights, an extra term
summed over answer positions, stats), `step_loss` once per optimizer step and `before_optimizer_step` on
the final gradients before clipping.

Normalisation: the step's loss is (Σ w·CE + Σ extra) / (answer tokens of the whole accumulated
batch on all ranks), which the Trainer passes as `num_items_in_batch`; so one process with batch 2B and
two processes with batch B give the same loss and gradients. The fine-tuned model's K-logits and
log-sum-exp come from the same forward's logits, in one fused pass with the CE
(`losses.answer_token_terms`), and logits are only made from the first answer column on
(`logits_to_keep`, when the model takes it).

Data plan: with a defence's `DataPlan` (`batch_plan`, a `PlannedBatches`, training/data_plan.py) the
training loader (`get_train_dataloader`) draws every micro-batch of an optimizer step from the source
the plan's schedule names, and `StepState.source` tells the defence which one it is.

Logged (means since the last log, each also `_harmful` / `_benign` by the rows' `harmful` flag): ce,
kl, gate_first_n (mean gate on the first N answer positions), safety_mass_ft, safety_mass_ref (total
probability on S, when the reference's log-sum-exp is known). A non-finite loss stops training with a
SafekeelError instead of being averaged away by `logging_nan_inf_filter`.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from safekeel.defences.base import Defence, LossTerms, StepState
from safekeel.errors import SafekeelError
from safekeel.losses import answer_token_terms, gather_frame

_GROUPS = ("", "_harmful", "_benign")


class DefenceLossMixin:
    """`compute_loss`, the optimizer-step hooks, the data plan's training loader and the logs of a defence;
    put it before the Trainer class in the bases and call `_init_defence` right after the Trainer's own
    `__init__`."""

    def _init_defence(self, defence: Defence, reference=None, safety_ids: torch.Tensor | None = None,
                      batch_plan=None) -> None:
        """`reference`: a `SafetyReference` for live reference logits (None with the cache, or for defences
        without a reference); `safety_ids`: [K] long; `batch_plan`: a `PlannedBatches` or None."""
        self.defence = defence
        self.reference = reference
        self.safety_ids = safety_ids
        self.batch_plan = batch_plan
        # We normalise by `num_items_in_batch` ourselves; this makes the Trainer count it and not rescale.
        self.model_accepts_loss_kwargs = True
        self._sums: dict[str, torch.Tensor] = {}
        self._keep_ok: bool | None = None
        self._step_loss_at = -1  # the global step whose once-per-step term was added
        self._hooked_at = -1  # the global step whose before_optimizer_step ran
        self.add_callback(_PreOptimizerStep(self))

    # -- loss ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask, index, targets = inputs["answer_mask"], inputs["answer_index"], inputs["answer_targets"]
        rows, cols = mask.nonzero(as_tuple=True)
        columns = index[rows, cols]  # [N] input column predicting each answer token
        extra_args, start = {}, 0
        if self._accepts_logits_to_keep(model) and columns.numel():
            # Only columns from the first one that predicts an answer token get logits (right padding:
            # every answer ends by the last column), so the prompt's [B, P, V] logits are never made.
            start = int(columns.min())
            extra_args["logits_to_keep"] = inputs["input_ids"].shape[1] - start
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
                    **extra_args)
        logits = out.logits  # [B, L - start, V]
        z = logits[rows, columns - start].float()  # [N, V] at the answer positions only
        ids = self.safety_ids.to(z.device) if self.safety_ids is not None else None
        # One fused pass: CE, the K safety logits and the log-sum-exp, one [N, V] buffer in the backward.
        ce, z_k, lse = answer_token_terms(z, targets[rows, cols], ids)  # [N], [N, K], [N]
        self._answer_metrics(z.detach(), targets[rows, cols], inputs)
        shape = mask.shape
        ce_frame = z.new_zeros(shape).index_put((rows, cols), ce)
        ft_k = ft_lse = None
        if ids is not None:
            ft_k = z.new_zeros(*shape, ids.numel()).index_put((rows, cols), z_k)
            ft_lse = z.new_zeros(shape).index_put((rows, cols), lse)
        step = StepState(batch=inputs, logits=logits, logits_start=start, mask=mask, ce=ce_frame, ft_k=ft_k,
                         ft_lse=ft_lse, safety_refs=lambda need_lse: self._safety_refs(inputs, need_lse),
                         full_refs=lambda: self._full_refs(inputs), target_refs=lambda: self._target_refs(inputs),
                         model=model, global_step=self.state.global_step,
                         source=self.batch_plan.source_of(self.state.global_step) if self.batch_plan else "main")
        terms: LossTerms = self.defence.loss(step)
        if terms.token_weights is not None:
            ce_sum = (ce * terms.token_weights[rows, cols].to(ce.dtype)).sum()
        else:
            ce_sum = ce.sum()
        extra = terms.extra if terms.extra is not None else ce.new_zeros(())
        total = ce_sum + extra
        if num_items_in_batch is not None:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages gradients over ranks
        else:
            loss = total / mask.sum().clamp_min(1)
        per_step = None
        if model.training and self._step_loss_at != self.state.global_step:  # first micro-batch of the step
            self._step_loss_at = self.state.global_step
            per_step = self.defence.step_loss(model, self.state)
            if per_step is not None:  # added once per optimizer step; DDP's mean over ranks keeps it once
                loss = loss + per_step
        if not bool(torch.isfinite(loss)):
            raise SafekeelError(
                f"the training loss became {float(loss.detach())} at step {self.state.global_step + 1} "
                f"(CE sum {float(ce_sum.detach()):.4g}, defence term {float(extra.detach()):.4g}"
                + (f", per-step term {float(per_step.detach()):.4g}" if per_step is not None else "")
                + "): lower --learning_rate, use --bf16 rather than --fp16, or check the data")
        self._accumulate(terms.stats, ce_frame.detach(), mask, inputs["harmful"], ft_k, ft_lse)
        if per_step is not None:  # logged as its mean over optimizer steps (no harmful/benign split)
            acc = torch.zeros(3, 2, device=ce.device)
            acc[0] = torch.stack([per_step.detach().float(), acc.new_ones(())])
            self._sums["step_term"] = self._sums.get("step_term", 0) + acc
        return (loss, out) if return_outputs else loss

    # -- data plan -------------------------------------------------------------------------------
    def get_train_dataloader(self):
        """The Trainer's loader, or with a data plan (`batch_plan`, a `PlannedBatches`) one whose every
        micro-batch comes from the source the plan's schedule names for its optimizer step."""
        if self.batch_plan is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_plan, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def _answer_metrics(self, z: torch.Tensor, targets: torch.Tensor, inputs: dict) -> None:
        """Called with the answer positions' logits z [N, V] (detached) and targets [N] on every micro-batch;
        a subclass may log metrics of them (TRL's token accuracy and entropy). Nothing here."""

    # -- optimizer-step hooks -------------------------------------------------------------------
    def _before_optimizer_step(self, model) -> None:
        """The defence's gradient edit, once per optimizer step, on the accumulated (and, under DDP,
        all-reduced) gradients before clipping."""
        if self._hooked_at != self.state.global_step:
            self._hooked_at = self.state.global_step
            step_stats = self.defence.before_optimizer_step(model, self.optimizer, self.state)
            for name, value in (step_stats or {}).items():  # {name: value} once per step, logged like step_term
                acc = torch.zeros(3, 2, device=self.args.device)
                acc[0, 0], acc[0, 1] = float(value), 1.0
                self._sums[name] = self._sums.get(name, 0) + acc

    def _clip_grad_norm(self, model):  # transformers calls this before clipping when max_grad_norm > 0
        self._before_optimizer_step(model)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):  # ... and this one in every case, after clipping
        self._before_optimizer_step(model)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _accepts_logits_to_keep(self, model) -> bool:
        """Whether the underlying transformers model takes `logits_to_keep` (checked once)."""
        if self._keep_ok is None:
            import inspect

            base = self.accelerator.unwrap_model(model)
            base = base.get_base_model() if hasattr(base, "get_base_model") else base
            self._keep_ok = "logits_to_keep" in inspect.signature(base.forward).parameters
        return self._keep_ok

    # -- reference -------------------------------------------------------------------------------
    def _safety_refs(self, inputs: dict, need_lse: bool) -> dict:
        if "ref_full" in inputs:  # from the cache, through the collator
            return {k: inputs[k] for k in ("ref_full", "ref_post", "ref_lse") if k in inputs}
        if self.reference is None:
            raise SafekeelError("this method needs reference logits but neither a cache nor a live reference is set")
        return self.reference.views(inputs, need_lse=need_lse)

    def _target_refs(self, inputs: dict) -> torch.Tensor:
        if self.reference is None:
            raise SafekeelError("this defence needs the reference's answer-token log-probabilities but no live "
                                "reference is set (its `reference` must be \"target\")")
        return self.reference.target_logps(inputs)

    def _full_refs(self, inputs: dict) -> torch.Tensor:
        if self.reference is None:
            raise SafekeelError("this defence needs the reference's full logits but no live reference is set")
        full = self.reference.full_logits(inputs["input_ids"], inputs["attention_mask"])
        return gather_frame(full, inputs["answer_index"])

    # -- logs ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self, stats: dict, ce: torch.Tensor, mask, harmful, ft_k, ft_lse) -> None:
        stats = dict(stats)
        counts = mask.sum(1).float()
        stats["ce"] = ((ce * mask).sum(1), counts)
        if ft_k is not None:
            mass = (torch.logsumexp(ft_k.detach(), -1) - ft_lse.detach()).clamp(max=0).exp()
            stats["safety_mass_ft"] = ((mass * mask).sum(1), counts)
        groups = torch.stack([torch.ones_like(harmful, dtype=torch.bool), harmful.bool(), ~harmful.bool()]).float()
        for name, (row_sum, row_count) in stats.items():
            acc = torch.stack([groups @ row_sum.float().detach(), groups @ row_count.float()], -1)  # [3, 2]
            self._sums[name] = self._sums.get(name, 0) + acc

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._sums:
            names = sorted(self._sums)
            stacked = torch.stack([self._sums[n] for n in names])  # [M, 3, 2]
            if self.args.world_size > 1:
                stacked = self.accelerator.reduce(stacked, "sum")
            for name, per_group in zip(names, stacked.tolist()):
                for suffix, (s, c) in zip(_GROUPS, per_group):
                    if c > 0:
                        logs[name + suffix] = s / c
            self._sums = {}
        super().log(logs, start_time)


class _PreOptimizerStep(TrainerCallback):
    """Runs the defence's `before_optimizer_step` where a transformers version has neither
    `_clip_grad_norm` nor `_get_grad_norm` (once per step: the trainer remembers the step)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._before_optimizer_step(self.trainer.model_wrapped)
