"""`SafekeelTrainer`: the transformers `Trainer` with loss = (weighted) CE on answer tokens + the defence's terms.

Built on `Trainer` (not TRL's `SFTTrainer`, whose dataset pipeline would re-tokenise and drop the
no-prompt view), so `accelerate launch` gives DDP, FSDP and DeepSpeed, and checkpoints, `--resume`, the
progress bar and `report_to` (TensorBoard, ...) behave as in TRL. For users of TRL's own `SFTTrainer`,
`safekeel.integrations.trl.SafetySFTTrainer` runs the same loss.

The loss, the defence's per-step hooks and the logged stats live in `training/loss_step.py`
(`DefenceLossMixin`, shared with the TRL integration, so the two cannot drift; docs/design.md,
"Normalisation across batches"), as is the training loader of a `DataPlan`'s schedule (`PlannedBatches`).
`JsonlLogger` writes `train_log.jsonl`.
"""

from __future__ import annotations

import json
import os
import time

from transformers import Trainer, TrainerCallback

from safekeel.defences.base import Defence
from safekeel.training.loss_step import DefenceLossMixin


class SafekeelTrainer(DefenceLossMixin, Trainer):
    """Trainer whose `compute_loss` is CE + the defence's terms (`DefenceLossMixin`). `reference`: a
    `SafetyReference` for live reference logits (None with the cache, or for defences without a reference);
    `safety_ids`: [K] long; `batch_plan`: a `PlannedBatches` when the defence has a data plan."""

    def __init__(self, *args, defence: Defence, reference=None, safety_ids=None, batch_plan=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_defence(defence, reference, safety_ids, batch_plan)


class JsonlLogger(TrainerCallback):
    """Appends each log to `path` as one JSON line (one write on an O_APPEND descriptor per line).
    On a resumed run, lines past the resumed step are dropped first, so steps never repeat."""

    def __init__(self, path):
        self.path = str(path)
        self.t0 = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not os.path.isfile(self.path):
            return
        from safekeel.io_utils import atomic_write_text

        keep = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= state.global_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
        atomic_write_text(self.path, "".join(keep))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs, "elapsed_s": round(time.time() - self.t0, 3)}
        line = (json.dumps(row, default=float) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
