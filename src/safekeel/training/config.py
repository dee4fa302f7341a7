"""Options of `safekeel train`, declared once as dataclasses; flags and YAML keys are derived from them.

Three kinds of option, one flat namespace (CLI flags = YAML keys, dashes or underscores):
- the run's own (`RunConfig`'s plain fields) and LoRA's (`LoraOptions`), declared here with their help;
- the chosen defence's (its `options_class` in `safekeel/defences/`), declared in the defence's file;
- every transformers `TrainingArguments` field, passed through; `TRAINING_DEFAULTS` are the few where
  safekeel follows the PACT paper instead of transformers/TRL (lr 3e-5, 3 epochs, batch 2), plus
  `max_length` (TRL's SFTConfig name, not a TrainingArguments field).
TRL's own names (ModelConfig's `use_peft`, `torch_dtype`, ...; SFTConfig's `max_seq_length`, `packing`, ...)
are mapped or refused with a reason by `trl_compat.translate`. A field with metadata `list=True` is a
comma-separated list that a YAML list or several flag values also give (`lora_target_modules: [q_proj, v_proj]`);
every other option takes one value, and a list given to it is an error naming it.

Resolution order: dataclass defaults < the defence's preset < YAML `--config` < command-line flags.
In the flat mapping `build_config` takes, a value of None means "not given".
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field, fields

from safekeel.defences.base import DefenceOptions, coerce, parse_bool, type_name
from safekeel.errors import SafekeelError
from safekeel.training.trl_compat import RENAMED, translate

log = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "TRAINING_DEFAULTS",
    "LoraOptions",
    "MonitorOptions",
    "RunConfig",
    "TrainingOptions",
    "build_config",
    "normalise_key",
]

# spellings of older releases and of TRL / transformers, mapped to ours (flags and YAML keys alike)
ALIASES = {"lambda": "lambda_kl", "lam": "lambda_kl", "resume_from_checkpoint": "resume", "lora_rank": "lora_r",
           "top_k": "k", "model_name_or_path": "model", "dataset_name": "dataset", "overwrite_output_dir": "overwrite",
           **RENAMED}

# where safekeel's defaults are not transformers' (the paper's: lr 3e-5, 3 epochs, batch 2) or are pinned
# so a run record is complete; every other TrainingArguments field keeps transformers' default
TRAINING_DEFAULTS: dict = {
    "learning_rate": 3e-5, "num_train_epochs": 3.0, "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1, "max_steps": -1, "logging_steps": 10.0, "save_steps": 500.0,
    "save_total_limit": None, "report_to": "none", "seed": 42, "bf16": False, "fp16": False, "max_length": 1024,
    "warmup_steps": 0.0, "lr_scheduler_type": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0,
    "gradient_checkpointing": False, "optim": "adamw_torch", "dataloader_num_workers": 0, "disable_tqdm": False,
}
NOT_TRAINING_ARGUMENTS = {"max_length": "longest tokenised row (prompt + answer); longer rows are cut"}
# TrainingArguments fields safekeel sets itself (changing them would break the two-view collator)
RESERVED = {"output_dir", "remove_unused_columns", "label_names", "do_train", "do_eval", "do_predict",
            "resume_from_checkpoint", "overwrite_output_dir", "local_rank"}
# ... of which a recipe may still name the value safekeel sets anyway (TRL recipes often hold these)
RESERVED_ACCEPTED = {"remove_unused_columns": False, "label_names": ["labels"], "do_train": True, "do_eval": False,
                     "do_predict": False}

# TRL's defaults (SFTConfig and ModelConfig, TRL 1.x) next to safekeel's, for `safekeel train --help` and
# docs/configuration.md: a TRL recipe that leaves these out trains differently here
TRL_DEFAULTS = {
    "learning_rate": "2e-05 (transformers: 5e-05)", "num_train_epochs": "3, the same",
    "per_device_train_batch_size": "8", "max_length": "1024, the same", "bf16": "on unless fp16",
    "gradient_checkpointing": "on", "logging_steps": "10, the same (transformers: 500)",
    "full": "on, as use_peft is off by default", "lora_r": "16", "lora_alpha": "32",
    "lora_target_modules": "not set, PEFT's per-model default (e.g. q_proj,v_proj)", "dtype": "float32 in TRL 1.x",
}
# the defaults that are the PACT paper's training set-up (the rest are transformers' or pinned for the record)
PAPER_DEFAULTS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "lora_r", "lora_alpha",
                  "lora_target_modules", "full")


def default_note(name: str, default: str) -> str:
    """The help's note on an option's default (`default` as text): whose it is and TRL's where it matters."""
    why = ", the PACT paper's" if name in PAPER_DEFAULTS else (
        ", pinned for the run record" if name in TRAINING_DEFAULTS else "")
    trl = f"; TRL: {TRL_DEFAULTS[name]}" if name in TRL_DEFAULTS else ""
    return f"safekeel default: {default}{why}{trl}"


class TrainingOptions(dict):
    """TrainingArguments keyword arguments (and `max_length`), readable as attributes: `t.seed`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class LoraOptions:
    full: bool = field(default=False, metadata=_help("full fine-tuning instead of LoRA (TRL: use_peft false)"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank", aliases=["--lora-rank", "--lora_rank"]))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha"))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout"))
    lora_target_modules: str = field(default="all-linear", metadata=_help(
        "module names to adapt, as several values, comma-separated or a YAML list (q_proj v_proj), or all-linear",
        list=True))
    load_in_4bit: bool = field(default=False, metadata=_help("QLoRA: 4-bit base weights (needs a GPU and bitsandbytes)"))


# monitor options that only watch (the over-refusal probe never rolls back): they change nothing a run
# learns, so a resume may change them (checkpoints.py) and a grid cell's fingerprint leaves them out
# (experiment/execute.py: cells committed before they existed still match)
WATCH_ONLY = ("monitor_benign_prompts", "over_refusal_tolerance")


@dataclass
class MonitorOptions:
    """The safety monitor and rollback (training/monitor.py, docs/monitoring.md)."""

    monitor_steps: int = field(default=50, metadata=_help(
        "probe safety at the start and every N optimizer steps (0: off)"))
    monitor_prompts: str | None = field(default=None, metadata=_help(
        "held-out harmful prompts for the monitor: a packaged set or a .jsonl/.csv file (not set: harmbench-val "
        "when it is already in the cache; the monitor never downloads by itself)"))
    monitor_benign_prompts: str = field(default="instructions", metadata=_help(
        "benign prompts the monitor also answers, to watch over-refusal (monitor/over_refusal_rate): a packaged "
        "set or a .jsonl/.csv file; 'none' turns this probe off"))
    monitor_probe_prompts: int = field(default=8, metadata=_help(
        "prompts the monitor answers from each set (spread over the set)"))
    monitor_probe_tokens: int = field(default=32, metadata=_help("greedy answer tokens per probe prompt"))
    safety_tolerance: float | None = field(default=None, metadata=_help(
        "warn when the probe's refusal rate falls more than this below its value at the start (0-1)"))
    safety_rollback: bool = field(default=False, metadata=_help(
        "on a warning, restore the weights and optimizer of the last probe within tolerance and lower the "
        "learning rate (needs --safety-tolerance)"))
    over_refusal_tolerance: float | None = field(default=None, metadata=_help(
        "warn when the benign probe's refusal rate rises more than this above its value at the start (0-1); "
        "a warning only: a rollback would not undo what the method asks of the model"))
    max_rollbacks: int = field(default=2, metadata=_help("rollbacks at most; later warnings only warn"))
    rollback_lr_factor: float = field(default=0.5, metadata=_help("learning rate multiplier at each rollback"))


@dataclass
class RunConfig:
    """Everything one `safekeel train` run needs; `run.train(config)` consumes it."""

    method: str = field(default="pact", metadata=_help("training method: a registered defence (`safekeel methods`)"))
    model: str | None = field(default=None, metadata=_help(
        "model to fine-tune: hub id, directory, .gguf or packaged name",
        aliases=["--model-name-or-path", "--model_name_or_path"]))
    dataset: str | None = field(default=None, metadata=_help(
        "task name (arith, sentiment, topic, gsm8k, sst2, agnews), a harmful set, a .jsonl/.csv/.parquet file "
        "with messages or prompt/response rows, or a hub dataset id", aliases=["--dataset-name", "--dataset_name"]))
    output_dir: str | None = field(default=None, metadata=_help("where the adapter (or model), checkpoints and logs go"))
    tokens: str | None = field(default=None, metadata=_help("safety-token file from `safekeel tokens identify`"))
    harmful: str | None = field(default=None, metadata=_help(
        "harmful data to mix in: strongreject-harmful (answers to StrongREJECT's training part; :all for every "
        "prompt), advbench, beavertails, a file"))
    poison_ratio: float = field(default=0.1, metadata=_help("share of harmful rows in the mix"))
    num_examples: int | None = field(default=None, metadata=_help("rows to train on (with --harmful: 5000)"))
    with_replacement: bool = field(default=False, metadata=_help(
        "repeat harmful/task rows when a source is smaller than its share"))
    system: str | None = field(default=None, metadata=_help("system prompt added to every training row"))
    base: str | None = field(default=None, metadata=_help(
        "the unaligned counterpart of --model, for defences that need one (model spec)"))
    safety_data: str | None = field(default=None, metadata=_help(
        "harmful prompts with refusals (chat JSONL or a packaged set), for defences that need safety data"))
    dtype: str = field(default="auto", metadata=_help(
        "weights dtype (auto: bf16 on GPU, fp32 on CPU; TRL's torch_dtype)", choices=["auto", "float32", "bfloat16",
                                                                                       "float16"],
        aliases=["--torch-dtype", "--torch_dtype"]))
    trust_remote_code: bool = field(default=False, metadata=_help("allow the model repository's own code"))
    resume: str | bool | None = field(default=None, metadata=_help(
        "resume from the latest complete checkpoint in --output-dir, or from the given one; the options that "
        "change training must match the checkpoint's", aliases=["--resume-from-checkpoint", "--resume_from_checkpoint"]))
    overwrite: bool = field(default=False, metadata=_help(
        "replace the training run already in --output-dir (its checkpoints, log and adapter are removed first)",
        aliases=["--overwrite-output-dir", "--overwrite_output_dir"]))
    reference_cache: str = field(default="auto", metadata=_help(
        "compute the reference's safety-token logits once before training (auto: when it fits on disk)",
        choices=["auto", "on", "off"]))
    reference_cache_dir: str | None = field(default=None, metadata=_help(
        "root of the reference caches (None: $SAFEKEEL_CACHE/reference)"))
    reference_batch_size: int = field(default=8, metadata=_help("batch size of the one-off cache pass"))
    overlap_check: str = field(default="harmbench", metadata=_help(
        "prompt sets the harmful rows must not overlap, several or comma-separated, or none (harmbench, the "
        "default, stands for the sets `eval safety` scores by default: HarmBench test and the whole StrongREJECT, "
        "which a run on strongreject-harmful overlaps by design; strongreject-heldout never does)", list=True))
    defence: DefenceOptions = field(default_factory=lambda: _default_defence_options())
    lora: LoraOptions = field(default_factory=LoraOptions)
    monitor: MonitorOptions = field(default_factory=MonitorOptions)
    training: TrainingOptions = field(default_factory=lambda: TrainingOptions(TRAINING_DEFAULTS))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SECTIONS}
        out.update(defence=dataclasses.asdict(self.defence), lora=dataclasses.asdict(self.lora),
                   monitor=dataclasses.asdict(self.monitor), training=dict(self.training))
        return out


SECTIONS = ("defence", "lora", "monitor", "training")
RUN_FIELDS = [f for f in fields(RunConfig) if f.name not in SECTIONS]


def _default_defence_options() -> DefenceOptions:
    from safekeel.defences.registry import defence_class

    return defence_class("pact").options_class.build({})


def resume_value(value) -> str | bool | None:
    """None (start anew), True (the latest complete checkpoint in output_dir) or a checkpoint path."""
    if value in (None, False) or (isinstance(value, str) and value.strip().lower() in ("", "false", "no", "off")):
        return None
    if value is True or str(value).strip().lower() in ("true", "auto", "last", "latest", "yes", "on"):
        return True
    return str(value)


def normalise_key(key: str) -> str:
    key = str(key).strip().lstrip("-").replace("-", "_")
    return ALIASES.get(key, key)


def training_argument_fields() -> dict:
    """{name: dataclasses.Field} of transformers' TrainingArguments."""
    from transformers import TrainingArguments

    return {f.name: f for f in fields(TrainingArguments) if f.init}


def training_argument_types() -> dict:
    """{name: annotation} of transformers' TrainingArguments, as declared: `HfArgumentParser` (which builds
    the train flags) rewrites the Fields' `.type` in place (`str | list[str] | None` becomes `str`), so the
    annotations are read from the class, never from the Fields."""
    import typing

    from transformers import TrainingArguments

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except Exception:  # noqa: BLE001 - an unresolvable annotation in some release: the Fields' types then
        hints = {}
    return {name: hints.get(name, f.type) for name, f in training_argument_fields().items()}


def defence_option_owners() -> dict[str, list[str]]:
    """{option name: [defences that declare it]} over the whole registry."""
    from safekeel.defences.registry import all_defences

    owners: dict[str, list[str]] = {}
    for name, cls in all_defences().items():
        for f in fields(cls.options_class):
            owners.setdefault(f.name, []).append(name)
    return owners


def _non_finite(value) -> bool:
    """nan/inf as a number or as text (`--training-arg x=nan`; TrainingArguments would take it)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")


def build_config(flat: dict) -> RunConfig:
    """A validated RunConfig from a flat {name: value} mapping (YAML keys and flags; None = not given)."""
    from safekeel.defences.registry import defence_class

    given: dict = {}
    for raw, value in flat.items():
        key = normalise_key(raw)
        if value is None:
            continue
        if key in given and given[key] != value:
            raise SafekeelError(f"option {key} given twice with different values")
        given[key] = value
    run_types = {f.name: f.type for f in RUN_FIELDS}
    lora_types = {f.name: f.type for f in fields(LoraOptions)}
    monitor_types = {f.name: f.type for f in fields(MonitorOptions)}
    owners = defence_option_owners()
    hf_types = training_argument_types()
    given = _without_reserved(translate(given, hf_types), run_types)
    unknown = [k for k in given if k not in run_types and k not in lora_types and k not in monitor_types
               and k not in owners and k not in hf_types and k not in TRAINING_DEFAULTS]
    if unknown:
        raise SafekeelError(f"unknown option(s): {', '.join(sorted(unknown))} (see `safekeel train --help`)")
    lists = list_options()
    given = {k: _one_or_list(k, v, lists, hf_types) for k, v in given.items()}

    method = str(given.get("method", "pact"))
    cls = defence_class(method)
    mine = {f.name for f in fields(cls.options_class)}
    ignored = sorted(k for k in given if k in owners and k not in mine and k not in run_types and k not in lora_types)
    if ignored:
        log.warning("ignored for --method %s (options of %s): %s", method,
                    ", ".join(sorted({o for k in ignored for o in owners[k]})), ", ".join(ignored))
    cfg = RunConfig(defence=cls.options_class.build({k: v for k, v in given.items() if k in mine}))
    training = TrainingOptions(TRAINING_DEFAULTS)
    for key, value in given.items():
        if key in mine or key in ignored:  # another defence's option: warned about above, not a training argument
            continue
        if key in run_types:
            setattr(cfg, key, value if key == "resume" else coerce(run_types[key], key, value))
        elif key in lora_types:
            setattr(cfg.lora, key, coerce(lora_types[key], key, value))
        elif key in monitor_types:
            setattr(cfg.monitor, key, coerce(monitor_types[key], key, value))
        else:  # a TrainingArguments field (or max_length): typed like safekeel's default, else checked later
            if _non_finite(value):
                raise SafekeelError(f"--{key.replace('_', '-')} must be a finite number, got {value!r}")
            kind = type_name(hf_types[key]) if key in hf_types else "int"  # max_length
            simple = kind.removesuffix(" | None") in ("bool", "int", "float")
            training[key] = coerce(kind, key, value) if simple else _yaml_no(hf_types.get(key), value)
    cfg.training = training
    validate(cfg)
    return cfg


def _without_reserved(given: dict, run_types: dict) -> dict:
    """`given` less the TrainingArguments safekeel sets itself: naming the value safekeel sets anyway is fine
    (TRL recipes hold `remove_unused_columns: false`); another value is an error."""
    out = {}
    for key, value in given.items():
        if key not in RESERVED or key in run_types:
            out[key] = value
        elif key not in RESERVED_ACCEPTED or _reserved_value(key, value) != RESERVED_ACCEPTED[key]:
            setting = f" (safekeel sets {RESERVED_ACCEPTED[key]})" if key in RESERVED_ACCEPTED else ""
            raise SafekeelError(f"{key}: set by safekeel itself and cannot be given{setting}")
    return out


def _reserved_value(key: str, value):
    if isinstance(RESERVED_ACCEPTED.get(key), bool):
        try:
            return parse_bool(value, key)
        except SafekeelError:
            return value
    return list(value) if isinstance(value, list | tuple) else value


def list_options() -> set[str]:
    """Names of the comma-separated list options (field metadata `list=True`) of the run, LoRA, the monitor
    and every defence."""
    from safekeel.defences.registry import all_defences

    classes = [RunConfig, LoraOptions, MonitorOptions, *(c.options_class for c in all_defences().values())]
    return {f.name for cls in classes for f in fields(cls) if f.metadata.get("list")}


def _takes_container(annotation) -> bool:
    """Whether a TrainingArguments annotation admits a list or a mapping (`report_to: str | list[str]`)."""
    import typing

    origin = typing.get_origin(annotation)
    if annotation in (list, dict, tuple) or origin in (list, dict, tuple):
        return True
    if isinstance(annotation, str):
        return "list" in annotation or "dict" in annotation
    return any(_takes_container(a) for a in typing.get_args(annotation)) if origin is not None else False


def _one_or_list(key: str, value, lists: set[str], hf_types: dict):
    """A YAML list or several flag values: joined with commas for a list option, kept for a TrainingArguments
    field that takes one, and a one-line error for every option that takes a single value."""
    if not isinstance(value, list | tuple | dict):
        return value
    flag = f"--{key.replace('_', '-')}"
    if key in lists:
        nested = isinstance(value, dict) or any(isinstance(item, list | tuple | dict) for item in value)
        if nested or any(item is None or not str(item).strip() for item in value):
            raise SafekeelError(f"{flag} takes a list of names (or one comma-separated text), got {value!r}")
        return ",".join(str(item).strip() for item in value)
    if key in hf_types and _takes_container(hf_types[key]):
        return list(value) if isinstance(value, tuple) else value
    kind = "a mapping" if isinstance(value, dict) else "a list"
    raise SafekeelError(f"{flag} takes one value, got {kind}: {value!r}")


def _yaml_no(annotation, value):
    """YAML reads a bare `no` as false: for a strategy option (`save_strategy: no`) that means "no"."""
    if value is False and annotation is not None and "Strategy" in str(annotation):
        return "no"
    return value


def validate(cfg: RunConfig) -> None:
    """Check option combinations (the defence's own were checked by its options' `finalize`)."""
    from safekeel.defences.registry import defence_class

    if not 0.0 <= cfg.poison_ratio <= 1.0:
        raise SafekeelError(f"--poison-ratio must be between 0 and 1, got {cfg.poison_ratio}")
    if cfg.num_examples is not None and cfg.num_examples <= 0:
        raise SafekeelError(f"--num-examples must be positive, got {cfg.num_examples}")
    if cfg.reference_cache not in ("auto", "on", "off"):
        raise SafekeelError(f"--reference-cache must be auto, on or off, got {cfg.reference_cache!r}")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise SafekeelError(f"--dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    t = cfg.training
    if t.bf16 and t.fp16:
        raise SafekeelError("--bf16 and --fp16 are exclusive")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
        if getattr(t, name) <= 0:
            raise SafekeelError(f"--{name} must be positive, got {getattr(t, name)}")
    if t.learning_rate <= 0:
        raise SafekeelError(f"--learning-rate must be positive, got {t.learning_rate}")
    for name in ("warmup_steps", "weight_decay", "max_grad_norm"):
        if getattr(t, name) < 0:
            raise SafekeelError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(t, name)}")
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        raise SafekeelError(f"--num-train-epochs must be positive (or set --max-steps), got {t.num_train_epochs}")
    if not 0.0 <= cfg.lora.lora_dropout < 1.0:
        raise SafekeelError(f"--lora-dropout must be in [0, 1), got {cfg.lora.lora_dropout}")
    for name in ("lora_r", "lora_alpha"):
        if getattr(cfg.lora, name) <= 0:
            raise SafekeelError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg.lora, name)}")
    _validate_targets(cfg.lora.lora_target_modules)
    if not 0 <= t.seed < 2**32:  # numpy's seeding range, which transformers' set_seed uses
        raise SafekeelError(f"--seed must be between 0 and 2**32 - 1, got {t.seed}")
    if t.dataloader_num_workers < 0:
        raise SafekeelError(f"--dataloader-num-workers must be >= 0, got {t.dataloader_num_workers}")
    if cfg.reference_batch_size <= 0:
        raise SafekeelError(f"--reference-batch-size must be positive, got {cfg.reference_batch_size}")
    cfg.resume = resume_value(cfg.resume)
    if cfg.overwrite and cfg.resume is not None:
        raise SafekeelError("--overwrite and --resume are exclusive: --overwrite starts over, --resume continues")
    if cfg.lora.load_in_4bit and cfg.lora.full:
        raise SafekeelError("--load-in-4bit (QLoRA) trains LoRA adapters; it cannot be combined with --full")
    for name in ("model", "dataset", "output_dir"):
        if not getattr(cfg, name):
            raise SafekeelError(f"--{name.replace('_', '-')} is required")
    _validate_monitor(cfg)
    cls = defence_class(cfg.method)
    cls(cfg.defence).check(cfg)


def _validate_targets(targets: str) -> None:
    """--lora-target-modules names at least one module, and all-linear stands alone (PEFT reads it only so)."""
    names = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not names:
        raise SafekeelError("--lora-target-modules names no module (give module names or all-linear)")
    if "all-linear" in names and len(names) > 1:
        raise SafekeelError(f"--lora-target-modules {targets}: all-linear stands alone (it means every linear "
                            "layer but the output head)")


def _validate_monitor(cfg: RunConfig) -> None:
    from safekeel.defences.base import sharded_backend

    m = cfg.monitor
    if m.monitor_steps < 0:
        raise SafekeelError(f"--monitor-steps must be >= 0 (0 turns the monitor off), got {m.monitor_steps}")
    for name in ("monitor_probe_prompts", "monitor_probe_tokens", "max_rollbacks"):
        if getattr(m, name) <= 0:
            raise SafekeelError(f"--{name.replace('_', '-')} must be positive, got {getattr(m, name)}")
    if m.safety_tolerance is not None and not 0.0 <= m.safety_tolerance <= 1.0:
        raise SafekeelError(f"--safety-tolerance must be between 0 and 1 (a drop in refusal rate), got "
                            f"{m.safety_tolerance}")
    if m.over_refusal_tolerance is not None and not 0.0 <= m.over_refusal_tolerance <= 1.0:
        raise SafekeelError(f"--over-refusal-tolerance must be between 0 and 1 (a rise in refusal rate on benign "
                            f"prompts), got {m.over_refusal_tolerance}")
    if not str(m.monitor_benign_prompts or "").strip():
        raise SafekeelError("--monitor-benign-prompts is empty (give 'none' to turn the benign probe off)")
    if m.over_refusal_tolerance is not None and str(m.monitor_benign_prompts).strip().lower() == "none":
        raise SafekeelError("--over-refusal-tolerance needs the benign probe, which --monitor-benign-prompts none "
                            "turns off")
    if not 0.0 < m.rollback_lr_factor <= 1.0:
        raise SafekeelError(f"--rollback-lr-factor must be in (0, 1], got {m.rollback_lr_factor}")
    if m.monitor_prompts is not None and not str(m.monitor_prompts).strip():
        raise SafekeelError("--monitor-prompts is empty")
    asked = [flag for flag, on in (("--safety-tolerance", m.safety_tolerance is not None),
                                   ("--over-refusal-tolerance", m.over_refusal_tolerance is not None),
                                   ("--safety-rollback", m.safety_rollback),
                                   ("--monitor-prompts", m.monitor_prompts is not None)) if on]
    if m.safety_rollback and m.safety_tolerance is None:
        raise SafekeelError("--safety-rollback needs --safety-tolerance (the drop in refusal rate that triggers it)")
    if m.monitor_steps == 0 and asked[:1] in (["--safety-tolerance"], ["--over-refusal-tolerance"],
                                              ["--safety-rollback"]):
        raise SafekeelError(f"{asked[0]} needs the monitor, which --monitor-steps 0 turns off")
    backend = sharded_backend(cfg.training)
    if asked and backend:  # the probe generates with the unwrapped model, whose parameters are sharded there
        raise SafekeelError(f"{asked[0]}: the safety monitor works with DDP, not {backend}; use plain "
                            "`accelerate launch` / torchrun, or leave the monitor off (--monitor-steps 0)")
