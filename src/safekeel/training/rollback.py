"""The safety monitor's rollback (docs/monitoring.md, "Rollback"): an in-memory snapshot of what training
changes, and a learning-rate cut that the schedule keeps.

A `Snapshot` holds CPU copies of the trainable parameters (the LoRA factors, or every weight with
`--full`) and of the optimizer's state (AdamW's moments and step counts), taken at a probe within
tolerance. Restoring copies them back in place, so the Trainer, DDP and the optimizer keep their
references to the same tensors. What is not restored: the global step, the data order (training goes on
with the next batches), the learning-rate schedule's position, and a defence's own state (EWC's θ*,
Lisa's anchor), which all describe the run rather than the weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


def _copy(obj, device: str | None = None):
    """A deep copy of a state dict (nested dicts/lists of tensors), tensors cloned onto `device` (None: where
    they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device or obj.device, copy=True)
    if isinstance(obj, dict):
        return {k: _copy(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy(v, device) for v in obj)
    return copy.deepcopy(obj)


@dataclass
class Snapshot:
    step: int  # the global step it was taken at
    params: dict  # {parameter name: CPU tensor} of the trainable parameters
    optimizer: dict | None  # optimizer.state_dict(), tensors on the CPU

    @classmethod
    def take(cls, model, optimizer, step: int) -> Snapshot:
        params = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        return cls(step, params, _copy(optimizer.state_dict(), "cpu") if optimizer is not None else None)

    def restore(self, model, optimizer) -> None:
        """Parameters and optimizer state back to the snapshot (in place; the snapshot stays usable)."""
        live = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.params.items():
                live[name].copy_(value)
        if optimizer is not None and self.optimizer is not None:
            # a fresh copy each time: on the CPU `load_state_dict` keeps the tensors it is given, and the
            # optimizer's next in-place update would then change the snapshot
            optimizer.load_state_dict(_copy(self.optimizer))


def scale_learning_rate(optimizer, scheduler, lrs: list[float], factor: float) -> float:
    """Set each param group's learning rate to `lrs[i] * factor` (`lrs`: the rates before the restore,
    which brings back the snapshot's) and scale the scheduler's base rates too, so its next step does
    not undo the cut (LambdaLR and friends compute lr = base_lr · f(step)). Returns the first group's rate.
    The scheduler's state, base rates included, is saved with each checkpoint, so a resumed run keeps it."""
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr * factor
    if scheduler is not None:
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):  # what `get_last_lr()`, and so the Trainer's log, reports
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return float(optimizer.param_groups[0]["lr"])
