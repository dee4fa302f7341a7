"""`PlannedBatches`: the batch sampler behind a defence's `DataPlan` (defences/base.py).

The training dataset is the user's examples followed by each extra source's; a source is a range of
dataset indices. For optimizer step s every micro-batch (gradient accumulation × processes of them)
comes from the source `schedule(s)` names. Which rows a micro-batch holds depends only on the global
step and the seed, never on what was iterated before, so `--resume` (which skips batches) and a new
epoch draw exactly what an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from safekeel.errors import SafekeelError


class PlannedBatches:
    """A batch sampler over the concatenated sources. `ranges` {name: range of indices}, "main" first."""

    def __init__(self, ranges: dict[str, range], schedule: Callable[[int], str], *, batch_size: int,
                 accumulation: int, world_size: int, steps_per_epoch: int, seed: int):
        if "main" not in ranges:
            raise SafekeelError("a data plan needs the user's data (source 'main')")
        empty = [name for name, r in ranges.items() if len(r) == 0]
        if empty:
            raise SafekeelError(f"the data plan's source(s) {', '.join(empty)} have no rows")
        self.ranges, self.schedule, self.batch_size = ranges, schedule, batch_size
        self.per_step = accumulation * world_size  # micro-batches per optimizer step, over all processes
        self.steps_per_epoch, self.seed, self.epoch = steps_per_epoch, seed, 0
        self._orders: dict[str, torch.Tensor] = {}

    def source_of(self, step: int) -> str:
        name = self.schedule(step)
        if name not in self.ranges:
            raise SafekeelError(f"the data plan's schedule named {name!r} at step {step}; sources: "
                                f"{', '.join(self.ranges)}")
        return name

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch * self.per_step

    def _order(self, name: str, lap: int) -> torch.Tensor:
        key = f"{name}:{lap}"
        if key not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + lap * 7919 + sum(map(ord, name)))
            stale = [k for k in self._orders if k.startswith(f"{name}:") and int(k.rsplit(":", 1)[1]) < lap - 1]
            for k in stale:  # a source's older laps are never read again
                del self._orders[k]
            self._orders[key] = torch.randperm(len(self.ranges[name]), generator=g)
        return self._orders[key]

    def _indices(self, name: str, first: int) -> list[int]:
        """batch_size indices of source `name`, from position `first` of its endless shuffled stream."""
        size, r = len(self.ranges[name]), self.ranges[name]
        out = []
        for position in range(first, first + self.batch_size):
            lap, at = divmod(position, size)
            out.append(r.start + int(self._order(name, lap)[at]))
        return out

    def __iter__(self):
        start = self.epoch * self.steps_per_epoch
        # micro-batches each source gave before this epoch: count the schedule's earlier steps
        used = {name: 0 for name in self.ranges}
        for step in range(start):
            used[self.source_of(step)] += 1
        for step in range(start, start + self.steps_per_epoch):
            name = self.source_of(step)
            for micro in range(self.per_step):
                first = (used[name] * self.per_step + micro) * self.batch_size
                yield self._indices(name, first)
            used[name] += 1


def steps_per_epoch(n_main: int, batch_size: int, accumulation: int, world_size: int) -> int:
    """Optimizer steps in one pass over the user's data (what the Trainer would count without a plan)."""
    return max(1, math.ceil(n_main / (batch_size * world_size)) // accumulation)
