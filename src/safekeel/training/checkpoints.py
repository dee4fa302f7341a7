"""Checkpoints for `--resume`: which one is complete, and whether it was trained with the same options.

transformers' own `resume_from_checkpoint=True` takes the highest-numbered `checkpoint-N`, even one a
crash cut short (weights written, `trainer_state.json` not yet) and even one left by another run. So
`--resume` is resolved here to an explicit path instead:

- complete = a parseable `trainer_state.json` with a `global_step` (the Trainer writes it last) and model
  weights whose safetensors header covers the file (a truncated file fails to open);
- `--resume` (True) takes the highest complete `checkpoint-N` of `--output-dir`; incomplete ones above
  it are named in a warning, and `set_aside` renames them `incomplete-checkpoint-N` so that neither
  transformers nor a later `--resume` picks them up and the Trainer never writes a new checkpoint on
  top of a half-written one;
- every checkpoint gets `safekeel_options.json` (`RecordOptions`, the run's `cfg.to_dict()`); a resume
  whose options differ in anything that changes the training is refused, naming the keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

from transformers import TrainerCallback

from safekeel.errors import SafekeelError
from safekeel.training.config import WATCH_ONLY, MonitorOptions, RunConfig

log = logging.getLogger(__name__)

OPTIONS_FILE = "safekeel_options.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin", "pytorch_model.bin.index.json")

# Options that may differ on resume because they do not change what is trained: bookkeeping, progress
# and logging, where the reference logits come from (the cache holds the same values), memory savers.
# max_steps / num_train_epochs / the batch are compared: they change the learning-rate schedule.
IGNORED = {"resume", "overwrite", "output_dir", "disable_tqdm", "logging_steps", "save_steps", "save_total_limit",
           "report_to", "dataloader_num_workers", "reference_cache", "reference_cache_dir", "reference_batch_size",
           "overlap_check", "trust_remote_code", "gradient_checkpointing", *WATCH_ONLY}
# The safety monitor only watches, unless --safety-rollback lets it restore weights and lower the learning
# rate: its options are compared only when either run rolls back.
MONITOR_KEYS = {f.name for f in dataclasses.fields(MonitorOptions)}
IGNORED_PREFIXES = ("logging_", "log_", "save_", "dataloader_", "hub_", "push_to_hub", "report_", "eval", "run_name",
                    "project", "trackio_", "per_device_eval", "include_", "skip_memory", "ddp_timeout")


class RecordOptions(TrainerCallback):
    """Writes the run's options into every checkpoint, so a later `--resume` can compare them."""

    def __init__(self, options: dict):
        self.options = options

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from safekeel.io_utils import atomic_write_json

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            atomic_write_json(folder / OPTIONS_FILE, self.options)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a checkpoint the Trainer can resume from, or None when it is complete."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is unreadable or cut short"
    if not isinstance(data, dict) or not isinstance(data.get("global_step"), int):
        return "trainer_state.json has no global_step"
    present = [name for name in _WEIGHTS if (path / name).is_file()]
    sharded = any(p.is_dir() and "fsdp" in p.name for p in path.iterdir())
    if not present and not sharded:
        return "no model weights"
    for name in present:
        problem = _weights_problem(path / name)
        if problem:
            return f"{name} {problem}"
    return None


def _weights_problem(file: Path) -> str | None:
    if file.stat().st_size == 0:
        return "is empty"
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), "pt"):
                pass  # the header must parse and its offsets must cover the file (truncation fails here)
        except Exception:  # noqa: BLE001 - any failure means the file cannot be loaded
            return "is damaged or cut short"
    elif file.name.endswith(".index.json"):
        try:
            shards = set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "is unreadable"
        missing = sorted(s for s in shards if not (file.parent / s).is_file())
        if missing:
            return f"names missing shards ({', '.join(missing[:3])})"
    return None


def run_checkpoints(directory: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of a run directory, highest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def resolve(resume, output_dir: str | Path) -> tuple[str | None, list[tuple[Path, str]]]:
    """(checkpoint path or None, [(skipped incomplete checkpoint, why)]) for `resume_value(cfg.resume)`.

    An explicit path must be complete itself, unless it is a run directory (then its latest complete one)."""
    if resume is None:
        return None, []
    if resume is True:
        where, flag = Path(output_dir), "--resume"
    else:
        where, flag = Path(resume), f"--resume {resume}"
        if not where.is_dir():
            raise SafekeelError(f"--resume: checkpoint directory not found: {resume}")
        if (where / "trainer_state.json").exists() or not run_checkpoints(where):
            problem = checkpoint_problem(where)
            if problem:
                raise SafekeelError(f"{flag} is not a complete checkpoint ({problem})")
            return str(where), []
    found = run_checkpoints(where)
    if not found:
        raise SafekeelError(f"--resume: no checkpoint in {where} to resume from; start a new run without --resume "
                           "(with --overwrite if the directory holds a finished one)")
    skipped = []
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), skipped
        skipped.append((path, problem))
    named = "; ".join(f"{p.name}: {why}" for p, why in skipped[:3])
    raise SafekeelError(f"--resume: no complete checkpoint in {where} ({named}); start over with --overwrite")


def set_aside(skipped: list[tuple[Path, str]], chosen: str) -> None:
    """Warn about the incomplete checkpoints passed over and rename them out of the Trainer's way."""
    for path, why in skipped:
        target = path.with_name(f"incomplete-{path.name}")
        if target.exists():
            import shutil

            shutil.rmtree(target)  # an older leftover of the same step: the newer one is kept
        path.rename(target)
        log.warning("--resume: skipped %s (%s), renamed it %s; resuming from %s", path.name, why, target.name,
                    Path(chosen).name)


def recorded_options(checkpoint: str | Path) -> dict | None:
    """The options the checkpoint was trained with: its own record, else its run's safekeel_run.json."""
    checkpoint = Path(checkpoint)
    for file, key in ((checkpoint / OPTIONS_FILE, None), (checkpoint.parent / "safekeel_run.json", "options")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data = data.get(key) if key and isinstance(data, dict) else data
        if isinstance(data, dict):
            return data
    return None


def flatten(options: dict) -> dict:
    """{flat option name: value} (the CLI's names) from a nested `RunConfig.to_dict()`."""
    out = {}
    for key, value in options.items():
        if isinstance(value, dict) and key in ("defence", "pact", "lora", "monitor", "training"):  # "pact": older
            for name, inner in value.items():
                if name == "extra" and isinstance(inner, dict):
                    out.update(inner)
                else:
                    out[name] = inner
        else:
            out[key] = value
    return out


def differences(old: dict, new: dict) -> list[str]:
    """'name old -> new' for each option that changes the training (see IGNORED)."""
    defaults = flatten(RunConfig().to_dict())  # a key an older record lacks had its default then
    a, b = flatten(old), flatten(new)
    rollback = bool(a.get("safety_rollback") or b.get("safety_rollback"))
    out = []
    for key in sorted(set(a) | set(b)):
        if key in IGNORED or key.startswith(IGNORED_PREFIXES) or (key in MONITOR_KEYS and not rollback):
            continue
        before, after = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
        if before != after:
            out.append(f"{key} {before!r} -> {after!r}")
    return out


def check_options(checkpoint: str, options: dict) -> None:
    """Refuse to resume `checkpoint` with options that would train something else."""
    old = recorded_options(checkpoint)
    if old is None:
        log.warning("--resume: %s records no options; cannot check they match this command's", checkpoint)
        return
    diffs = differences(old, options)
    if diffs:
        raise SafekeelError(f"--resume: {checkpoint} was trained with other options ({'; '.join(diffs)}); resume "
                            "with the same options, or start over with --overwrite")
