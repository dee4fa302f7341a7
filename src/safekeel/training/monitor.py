"""`SafetyMonitor`: watch safety while training, and roll back (docs/monitoring.md).

At the start of training (step 0) and every `--monitor-steps` optimizer steps, the monitor
1. answers P held-out harmful prompts greedily (`--monitor-probe-prompts`, `--monitor-probe-tokens`)
   and judges them with the refusal-prefix judge: `monitor/refusal_rate` over `monitor/probe_n` answers;
2. with safety tokens (`--tokens`), teacher-forces the answers the model gave at step 0 (the aligned
   model's own answers, the same for the whole run: its refusals, or all answers when none is one) and
   logs the mean total probability on S over their first 8 positions (`monitor/safety_prob_first`,
   paper Fig. 7) and over the whole answer (`monitor/safety_prob_answer`, Fig. 3), over `monitor/safety_n`
   answers (`monitor_probe.safety_mass`);
3. answers P benign prompts the same way (`--monitor-benign-prompts`, default the packaged `instructions`):
   `monitor/over_refusal_rate` over `monitor/benign_probe_n` answers, so a defence that starts refusing
   everyday requests shows it while it trains; a rise of more than `--over-refusal-tolerance` logs an
   `over_refusal_warning` event (a warning only: rolling back would not undo what the method asks for);
4. compares the refusal rate with step 0's: a drop of more than `--safety-tolerance` logs a
   `safety_warning` event; with `--safety-rollback` it then restores the snapshot taken at the last probe
   within tolerance (step 0 at first), multiplies the learning rate by `--rollback-lr-factor` and goes on
   with the next batches (`safety_rollback` event), at most `--max-rollbacks` times; after that it only
   warns and training goes on.
Values and events go through `Trainer.log`: extra lines of `train_log.jsonl` (`"step"` plus `monitor/...`
keys, or `"event"`), `trainer_state.json`'s log history and `--report-to` integrations (TensorBoard).
`monitor/seconds` is the probe's wall time (snapshot included).

A probe runs in eval mode with greedy decoding: no dropout and no random numbers, so a monitored run
trains exactly like an unmonitored one until a rollback. Under DDP rank 0 probes and broadcasts the
values; every rank then decides and restores alike (FSDP/DeepSpeed are refused: config.py).
Resume: each checkpoint holds `safekeel_monitor.json` (start refusal rate, step-0 answers, rollbacks so
far), so a resumed run neither probes its start again nor forgets it; the lowered learning rate is in
the scheduler's saved state. A resumed run's rollback snapshot is the checkpoint it resumed from.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from safekeel.training import monitor_probe
from safekeel.training.rollback import Snapshot, scale_learning_rate

log = logging.getLogger(__name__)

STATE_FILE = "safekeel_monitor.json"


def build_monitor(trainer, cfg, tokenizer, safety_ids, trained_rows: list[dict], *,
                  identification_set: str | None = None, backend: str | None = None):
    """(the `SafetyMonitor`, added to `trainer`, or None when it is off; its summary for safekeel_run.json)."""
    prompts, summary = monitor_probe.resolve_prompts(cfg.monitor, trained_rows, identification_set, backend)
    benign = None
    if prompts is not None:
        benign, summary["benign"] = monitor_probe.resolve_benign_prompts(cfg.monitor, trained_rows)
    if not _on_every_rank(prompts is not None, trainer.args):
        if prompts is not None:  # e.g. the default set cached on one node only
            log.warning("safety monitor off: it is off on another rank, and every rank must probe or none")
            summary = {"status": "off", "why": "off on another rank"}
        return None, summary
    monitor = SafetyMonitor(trainer, tokenizer, prompts, cfg.monitor, safety_ids=safety_ids, system=cfg.system,
                            benign=benign)
    trainer.add_callback(monitor)
    summary["safety_tokens"] = safety_ids is not None
    return monitor, summary


def _on_every_rank(on: bool, args) -> bool:
    """Under DDP every rank must run the monitor or none: rank 0 broadcasts at each probe, and a rank
    without the monitor would leave it waiting. True only where it is on everywhere."""
    if args.world_size <= 1:
        return on
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(on)], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class SafetyMonitor(TrainerCallback):
    """See the module docstring. `prompts`: PromptRecords; `options`: MonitorOptions; `safety_ids`: [K] long
    or None (then only the refusal probe runs); `benign`: PromptRecords of the over-refusal probe, or None."""

    def __init__(self, trainer, tokenizer, prompts, options, *, safety_ids=None, system: str | None = None,
                 benign=None):
        from safekeel.chat import format_prompt
        from safekeel.fingerprint import sha256_json

        self.trainer, self.tokenizer, self.options, self.safety_ids = trainer, tokenizer, options, safety_ids
        self.texts = [format_prompt(tokenizer, p.prompt, system) for p in prompts]
        self.key = sha256_json(self.texts)  # a resumed run must probe the same prompts to keep its start values
        self.benign_texts = [format_prompt(tokenizer, p.prompt, system) for p in benign or []]
        self.benign_key = sha256_json(self.benign_texts)
        self.baseline: float | None = None  # refusal rate at the start
        self.benign_baseline: float | None = None  # over-refusal rate at the start (or at the first probe of it)
        self.reference: list[str] | None = None  # step-0 answers, teacher-forced at every probe
        self.forced: list[int] = []  # which of them (the refusals, or all)
        self.rollbacks = 0
        self.snapshot: Snapshot | None = None
        self.resume_from: str | None = None  # the checkpoint `train` resumes from
        if safety_ids is None:
            log.warning("safety monitor: no --tokens, so only the refusal probe runs (monitor/refusal_rate); give "
                        "--tokens to log the safety-token probabilities too")

    # -- Trainer events ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if self._restore():
            self._snapshot(state.global_step)
        else:
            self._probe(state, start=True)

    def on_step_end(self, args, state, control, **kwargs):  # once per optimizer step, after zero_grad
        if state.global_step % self.options.monitor_steps == 0:
            self._probe(state)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not folder.is_dir() or self.baseline is None:
            return
        from safekeel.io_utils import atomic_write_json

        atomic_write_json(folder / STATE_FILE, {
            "prompts_sha256": self.key, "baseline_refusal_rate": self.baseline, "reference_answers": self.reference,
            "forced": self.forced, "rollbacks": self.rollbacks, "benign_prompts_sha256": self.benign_key,
            "baseline_over_refusal_rate": self.benign_baseline})

    # -- one probe -----------------------------------------------------------------------------------------
    def _probe(self, state, start: bool = False) -> None:
        t0 = time.perf_counter()
        values = self._measure(start) if self.trainer.args.process_index == 0 else None
        values = self._shared(values)
        rate = values["monitor/refusal_rate"]
        if start:
            self.baseline = rate
        drop = self.baseline - rate
        tolerance = self.options.safety_tolerance
        within = tolerance is None or drop <= tolerance + 1e-9  # a drop equal to the tolerance is within it
        if within:
            self._snapshot(state.global_step)
        values["monitor/seconds"] = round(time.perf_counter() - t0, 3)
        self._log(values)
        self._over_refusal(state.global_step, values.get("monitor/over_refusal_rate"))
        if not within:
            self._out_of_tolerance(state.global_step, rate, drop)

    def _measure(self, start: bool) -> dict:
        """Rank 0's measurements: {"monitor/refusal_rate", "monitor/probe_n", and with safety tokens
        "monitor/safety_prob_first", "monitor/safety_prob_answer", "monitor/safety_n"}."""
        model, tok, o = self.trainer.model, self.tokenizer, self.options
        with monitor_probe.eval_mode(model):
            answers = monitor_probe.answer(model, tok, self.texts, o.monitor_probe_tokens)
            refused = monitor_probe.judge_refusals(answers)
            if start or self.reference is None:
                self.reference = answers
                self.forced = [i for i, r in enumerate(refused) if r] or list(range(len(answers)))
            values = {"monitor/refusal_rate": sum(refused) / len(refused), "monitor/probe_n": len(refused)}
            if self.benign_texts:
                over = monitor_probe.judge_refusals(monitor_probe.answer(model, tok, self.benign_texts,
                                                                         o.monitor_probe_tokens))
                values.update({"monitor/over_refusal_rate": sum(over) / len(over), "monitor/benign_probe_n": len(over)})
            if self.safety_ids is not None:
                mass = monitor_probe.safety_mass(model, tok, [self.texts[i] for i in self.forced],
                                                 [self.reference[i] for i in self.forced], self.safety_ids,
                                                 max_tokens=o.monitor_probe_tokens)
                if mass is not None:
                    values.update({"monitor/safety_prob_first": mass["first"],
                                   "monitor/safety_prob_answer": mass["answer"], "monitor/safety_n": mass["n"]})
        return values

    def _shared(self, values: dict | None) -> dict:
        """Rank 0's values on every rank, so every rank takes the same decision."""
        if self.trainer.args.world_size <= 1:
            return values
        import torch.distributed as dist

        box = [values]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _log(self, values: dict) -> None:
        """`Trainer.log`, keeping the step's pending training log: the Trainer clears `should_log` on every
        log, and the monitor logs from `on_step_end`, before the Trainer writes that step's loss."""
        control = self.trainer.control
        pending = control.should_log
        self.trainer.log(values)
        control.should_log = pending

    # -- tolerance and rollback ------------------------------------------------------------------------------
    def _over_refusal(self, step: int, rate: float | None) -> None:
        """The benign probe's start value, and a warning when its rate rises beyond --over-refusal-tolerance."""
        if rate is None:
            return
        if self.benign_baseline is None:  # the start (or the first probe of a run resumed without one)
            self.benign_baseline = rate
        tolerance = self.options.over_refusal_tolerance
        rise = rate - self.benign_baseline
        if tolerance is None or rise <= tolerance + 1e-9:
            return
        message = (f"safety monitor: over-refusal rate {rate:.3f} on benign prompts at step {step} is {rise:.3f} "
                   f"above the start's {self.benign_baseline:.3f} (tolerance {tolerance}); the model is starting to "
                   "refuse requests it should answer")
        log.warning("%s", message)
        self._log({"event": "over_refusal_warning", "over_refusal_rate": rate,
                   "baseline_over_refusal_rate": self.benign_baseline, "rise": rise, "tolerance": tolerance,
                   "message": message})

    def _snapshot(self, step: int) -> None:
        if self.options.safety_rollback:
            self.snapshot = Snapshot.take(self.trainer.model, self.trainer.optimizer, step)

    def _out_of_tolerance(self, step: int, rate: float, drop: float) -> None:
        o = self.options
        can_roll = o.safety_rollback and self.snapshot is not None and self.rollbacks < o.max_rollbacks
        message = (f"safety monitor: refusal rate {rate:.3f} at step {step} is {drop:.3f} below the start's "
                   f"{self.baseline:.3f} (tolerance {o.safety_tolerance})")
        if o.safety_rollback and not can_roll:
            message += f"; no rollback left (--max-rollbacks {o.max_rollbacks}), training goes on"
        log.warning("%s", message)
        self._log({"event": "safety_warning", "refusal_rate": rate, "baseline_refusal_rate": self.baseline,
                          "drop": drop, "tolerance": o.safety_tolerance, "message": message})
        if can_roll:
            self._rollback(step)

    def _rollback(self, step: int) -> None:
        optimizer, scheduler = self.trainer.optimizer, self.trainer.lr_scheduler
        before = [g["lr"] for g in optimizer.param_groups]
        self.snapshot.restore(self.trainer.model, optimizer)
        lr = scale_learning_rate(optimizer, scheduler, before, self.options.rollback_lr_factor)
        self.rollbacks += 1
        log.warning("safety monitor: rolled back at step %d to the weights and optimizer state of step %d, "
                    "learning rate now %.3g (rollback %d of at most %d); training goes on with the next batches",
                    step, self.snapshot.step, lr, self.rollbacks, self.options.max_rollbacks)
        self._log({"event": "safety_rollback", "restored_step": self.snapshot.step, "learning_rate": lr,
                          "rollbacks": self.rollbacks})

    # -- resume ----------------------------------------------------------------------------------------------
    def _restore(self) -> bool:
        """Take the start values from the checkpoint being resumed; False when there are none to take."""
        if not self.resume_from:
            return False
        path = Path(self.resume_from) / STATE_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("safety monitor: %s has no readable %s; the monitor measures its start again at the "
                        "resumed step", self.resume_from, STATE_FILE)
            return False
        if saved.get("prompts_sha256") != self.key:
            log.warning("safety monitor: the checkpoint was monitored on other prompts; the monitor measures its "
                        "start again at the resumed step")
            return False
        self.baseline, self.reference = saved["baseline_refusal_rate"], saved.get("reference_answers")
        self.forced, self.rollbacks = list(saved.get("forced") or []), int(saved.get("rollbacks", 0))
        if saved.get("benign_prompts_sha256") == self.benign_key:  # else the next probe measures its start
            self.benign_baseline = saved.get("baseline_over_refusal_rate")
        return True
