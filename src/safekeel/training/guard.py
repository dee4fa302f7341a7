"""What `train` checks before it loads anything, and what it does to `--output-dir` once it holds the lock.

`preflight(cfg)` only reads: the arguments that can be checked cheaply (output directory, model spec,
safety-token file, data and overlap specs, the TrainingArguments) and the state of the output
directory, so a typo fails in a second with one line and leaves the disk untouched, before any
download, model load or data work. `settle(cfg)` runs again under the directory's `RunLock` (another
run may have written meanwhile) and then acts: `--overwrite` removes the previous run's files,
`--resume` sets incomplete checkpoints aside and checks the chosen one's options.

A directory "holds a run" when it has any of RUN_MARKERS (what `train` and the Trainer write). Without
`--overwrite` or `--resume` such a directory is refused, and so is a non-empty one holding other files
(a mistyped `--output-dir ~` must not fill a home directory). `--overwrite` removes only the run's
files (markers, and the tokenizer/model-card files saved beside them); other files are kept and named.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safekeel import checks
from safekeel.errors import SafekeelError
from safekeel.locking import LOCK_NAME, is_secondary_rank
from safekeel.training import checkpoints

log = logging.getLogger(__name__)

RUN_MARKERS = ("safekeel_run.json", "train_log.jsonl", "checkpoint-*", "incomplete-checkpoint-*",
               "adapter_config.json", "adapter_model.*", "trainer_state.json", "training_args.bin", "config.json",
               "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin*")
# saved beside a run's weights; on their own they may be anyone's, so they count only next to a marker
RUN_COMPANIONS = ("README.md", "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab.json",
                  "merges.txt", "added_tokens.json", "chat_template.jinja", "runs")


@dataclass
class Plan:
    resume: str | None = None  # the checkpoint to resume from
    skipped: list = field(default_factory=list)  # [(incomplete checkpoint, why)] passed over
    clear: list = field(default_factory=list)  # the previous run's files, removed by --overwrite
    others: list = field(default_factory=list)  # unrelated entries of the output directory


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def read_tokens(path: str):
    """The safety-token artifact, with every way a file can be wrong reported as one line."""
    from safekeel.tokens.artifact import SafetyTokens

    try:
        return SafetyTokens.load(path)
    except SafekeelError as exc:
        raise SafekeelError(f"--tokens: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SafekeelError(f"--tokens {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:  # a field of the wrong type
        why = str(exc).splitlines()[0] if str(exc) else "malformed field"
        raise SafekeelError(f"--tokens {path} is not a valid safety-token file ({type(exc).__name__}: {why})") from None


def _dataset_spec(spec: str, flag: str = "--dataset") -> None:
    """The `--dataset` forms `load_training_data` accepts, checked without loading (files must exist and hold rows)."""
    from safekeel.data.harmful import is_harmful_set
    from safekeel.rows import check_local_or_hub
    from safekeel.tasks import is_task_name

    spec = str(spec).strip()
    if is_task_name(spec) or is_harmful_set(spec):
        return
    if not check_local_or_hub(spec, flag, nonempty=True):
        raise SafekeelError(f"{flag}: unknown training data {spec!r}: use a task name, a harmful set, a "
                            ".jsonl/.csv/.parquet file or a hub dataset id")


def check_arguments(cfg, *, training_args: bool = True) -> None:
    """The cheap argument checks (no download, no model, no data rows). `training_args=False` leaves out
    building transformers' TrainingArguments, which would start CUDA in the calling process: `safekeel
    experiment` checks every cell this way before the first runs, and each cell's own process checks the rest."""
    from safekeel.data.harmful import check_harmful_spec
    from safekeel.data.prompts import prompt_spec
    from safekeel.models.specs import model_spec
    from safekeel.training.arguments import training_arguments

    out = checks.output_dir(cfg.output_dir)
    model = model_spec(cfg.model)
    if Path(model).is_dir() and _inside(Path(model), out):
        raise SafekeelError(f"--output-dir {cfg.output_dir} contains the model being trained ({model}); "
                            "write the run elsewhere")
    from safekeel.defences.registry import defence_class

    defence = defence_class(cfg.method)(cfg.defence)
    defence.check(cfg)  # its missing inputs, one line
    if cfg.tokens:
        defence.select_tokens(read_tokens(cfg.tokens))  # --k larger than the artifact
    if cfg.base:
        model_spec(cfg.base, "--base")
    if cfg.safety_data:
        from safekeel.data.safety_data import safety_data_spec

        safety_data_spec(cfg.safety_data)
    _dataset_spec(cfg.dataset)
    if cfg.harmful:
        check_harmful_spec(cfg.harmful)
    for name in (cfg.overlap_check or "").split(","):
        if name.strip() and name.strip().lower() != "none":
            prompt_spec(name.strip(), "--overlap-check")
    if cfg.monitor.monitor_prompts and cfg.monitor.monitor_steps:
        from safekeel.rows import check_local_or_hub, is_file_spec

        spec = prompt_spec(str(cfg.monitor.monitor_prompts), "--monitor-prompts")
        if is_file_spec(spec):
            check_local_or_hub(spec, "--monitor-prompts", nonempty=True)  # an empty file fails before any load
    if cfg.reference_cache_dir:
        checks.output_dir(cfg.reference_cache_dir, "--reference-cache-dir")
    if not training_args:
        return
    args = training_arguments(cfg)  # bad --training-arg values (eval_strategy=bogus) and report_to packages
    if getattr(args.eval_strategy, "value", args.eval_strategy) != "no":  # else the Trainer refuses, after loading
        raise SafekeelError("--training-arg eval_strategy: `safekeel train` has no evaluation set; leave it at "
                            "no and evaluate with `safekeel eval`")


def _inside(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def inspect(cfg) -> Plan:
    """Read-only: what the output directory holds and what the command may do with it (or SafekeelError)."""
    out = Path(cfg.output_dir).expanduser()
    plan = Plan()
    plan.resume, plan.skipped = checkpoints.resolve(cfg.resume, out)
    if plan.resume:
        checkpoints.check_options(plan.resume, cfg.to_dict())
    if is_secondary_rank() or not out.is_dir():
        return plan  # other DDP ranks share rank 0's directory, which rank 0 alone checks
    cache = Path(cfg.reference_cache_dir).expanduser() if cfg.reference_cache_dir else None
    entries = sorted(p for p in out.iterdir() if p.name != LOCK_NAME and not (cache and _inside(cache, p)))
    markers = [p for p in entries if _matches(p.name, RUN_MARKERS)]
    if markers:
        plan.clear = [p for p in entries if p in markers or _matches(p.name, RUN_COMPANIONS)]
    plan.others = [p for p in entries if p not in plan.clear]
    if plan.resume or cfg.overwrite or not entries:
        return plan
    if markers:
        raise SafekeelError(f"--output-dir {cfg.output_dir} already holds a training run ({_names(markers)}): add "
                            "--overwrite to replace it, --resume to continue it, or choose another directory")
    raise SafekeelError(f"--output-dir {cfg.output_dir} is not empty ({_names(entries)}): choose an empty or new "
                        "directory, or add --overwrite to train there anyway (these files are kept)")


def _names(paths: list[Path], limit: int = 4) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def preflight(cfg) -> Plan:
    """Every check `train` can make before loading anything; reads only."""
    check_arguments(cfg)
    return inspect(cfg)


def settle(cfg) -> Plan:
    """Under the output directory's lock: inspect again, then clear (--overwrite) or set aside (--resume)."""
    plan = inspect(cfg)
    if is_secondary_rank():
        return plan
    if cfg.overwrite and plan.clear:
        for path in plan.clear:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        log.warning("--overwrite: removed the previous run in %s (%s)", cfg.output_dir, _names(plan.clear))
    if cfg.overwrite and plan.others:
        log.warning("--overwrite: kept files that are not a training run's: %s", _names(plan.others))
    if plan.skipped:
        checkpoints.set_aside(plan.skipped, plan.resume)
    return plan
