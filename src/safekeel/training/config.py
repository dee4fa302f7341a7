"""Options of `safekeel train`: PACT knobs with the `paper` / `reference-code` presets, LoRA, and the
TRL/transformers training arguments, all reachable from one flat namespace (CLI flags = YAML keys).

Resolution order: dataclass defaults < preset < YAML `--config` < command-line flags. A value of None in
the flat mapping means "not given" and keeps the lower layer.

What the presets encode (DESIGN §2; the authors' code is Glresearch1/PACT `finetuning_pact.py`):
- `paper`: Eq. 3-8 literally: T = 1, gate σ(I_ft − I_post), N = τ = 8 (the paper gives none; these are
  the code's), threshold 0.9, λ = 3, K = 50.
- `reference-code`: the authors' training loop: KL on logits / T with T = 2 and a T² factor, gate
  σ(α(I_ft − I_post − b)) with α = 2, b = 0 (`gate_alpha=2.0, gate_bias=0.0`), the dispersion computed at
  temperature 1 (`gate_T=1.0`), top-p threshold 0.9, N = 8, τ = 8. Its `lambda_kl` defaults to 0 (off)
  and its README runs λ = 1; the paper reports λ = 3, kept here for both presets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from safekeel.errors import SafekeelError

METHODS = ("sft", "kl", "pact")
PRESETS: dict[str, dict] = {
    "paper": {"temperature": 1.0, "gate_scale": 1.0, "gate_bias": 0.0, "n": 8, "tau": 8.0, "threshold": 0.9,
              "lambda_kl": 3.0},
    "reference-code": {"temperature": 2.0, "gate_scale": 2.0, "gate_bias": 0.0, "n": 8, "tau": 8.0,
                       "threshold": 0.9, "lambda_kl": 3.0},
}
POST_TAU_MULT = 6  # the no-prompt view is computed for the first N + 6τ answer positions (c~ < e^-6 after)
ALIASES = {"lambda": "lambda_kl", "lam": "lambda_kl", "resume_from_checkpoint": "resume", "lora_rank": "lora_r",
           "top_k": "k", "model_name_or_path": "model", "dataset_name": "dataset", "overwrite_output_dir": "overwrite"}


@dataclass
class PactOptions:
    """PACT (and `kl`) regulariser options. `weights`/`calibration`/`decay` None = the scope's default."""

    preset: str = "paper"
    lambda_kl: float = 3.0
    k: int | None = None  # top-K of the artifact; None = min(50, artifact size)
    n: int = 8
    tau: float = 8.0
    threshold: float = 0.9
    kl_scope: str = "safety"  # safety: Eq. 3-8 on S; full: the full-vocabulary KL (Table 5, first rung)
    weights: bool | None = None
    calibration: bool | None = None
    decay: bool | None = None
    safety_mass: bool = False
    temperature: float = 1.0
    gate_scale: float = 1.0
    gate_bias: float = 0.0

    def post_positions(self) -> int | None:
        """How many answer positions the no-prompt view needs: 0 without calibration, None (all) without decay."""
        if self.kl_scope == "full" or not self.calibration:
            return 0
        if not self.decay:
            return None
        return int(self.n + POST_TAU_MULT * self.tau + 0.999999)


@dataclass
class LoraOptions:
    full: bool = False  # full fine-tuning instead of LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"  # comma-separated module names, or all-linear
    load_in_4bit: bool = False  # QLoRA (GPU + bitsandbytes)


@dataclass
class TrainingOptions:
    """transformers/TRL `TrainingArguments` names and the paper's defaults (lr 3e-5, 3 epochs, batch 2)."""

    learning_rate: float = 3e-5
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_steps: int = -1
    logging_steps: float = 10
    save_steps: float = 500
    save_total_limit: int | None = None
    report_to: str = "none"
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    max_length: int = 1024
    warmup_steps: float = 0
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"
    dataloader_num_workers: int = 0
    disable_tqdm: bool = False
    extra: dict = field(default_factory=dict)  # any other TrainingArguments field (YAML or --training-arg)


@dataclass
class RunConfig:
    """Everything one `safekeel train` run needs; `run.train(config)` consumes it."""

    method: str = "pact"
    model: str | None = None
    dataset: str | None = None
    output_dir: str | None = None
    tokens: str | None = None
    harmful: str | None = None
    poison_ratio: float = 0.1
    num_examples: int | None = None
    with_replacement: bool = False
    system: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    resume: str | bool | None = None  # True/"auto" = latest complete checkpoint in output_dir, or a checkpoint path
    overwrite: bool = False  # replace the run already in output_dir (its checkpoints, log, adapter)
    reference_cache: str = "auto"  # auto | on | off
    reference_cache_dir: str | None = None
    reference_batch_size: int = 8
    overlap_check: str = "harmbench"  # comma-separated prompt sets the harmful rows must not overlap; "none"
    pact: PactOptions = field(default_factory=PactOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"pact": PactOptions, "lora": LoraOptions, "training": TrainingOptions}
_TOP = {f.name for f in fields(RunConfig)} - set(_SECTIONS)


def _key_map() -> dict[str, tuple[str | None, str]]:
    out: dict[str, tuple[str | None, str]] = {name: (None, name) for name in _TOP}
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            if f.name != "extra":
                out[f.name] = (section, f.name)
    return out


KEYS = _key_map()


def normalise_key(key: str) -> str:
    key = str(key).strip().lstrip("-").replace("-", "_")
    return ALIASES.get(key, key)


def parse_bool(value, name: str) -> bool:
    """on/off, true/false, yes/no, 1/0 (YAML already turns on/off into booleans)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise SafekeelError(f"--{name.replace('_', '-')} must be on or off, got {value!r}")


def _coerce(cls, name: str, value):
    """Cast a flat value to the dataclass field's declared type (YAML gives ints for floats etc.)."""
    if value is None:
        return None
    ftype = str({f.name: f.type for f in fields(cls)}[name])
    try:
        if ftype.startswith("bool"):
            return parse_bool(value, name)
        if name == "resume":
            return value if isinstance(value, bool) else str(value)
        if ftype.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if ftype.startswith("float"):
            number = float(value)
            if not math.isfinite(number):  # argparse and YAML (.nan, .inf) both accept these
                raise SafekeelError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
            return number
        if ftype.startswith("str"):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise SafekeelError(f"--{name.replace('_', '-')}: expected {ftype.split(' |')[0]}, got {value!r}") from None
    return value


def _non_finite(value) -> bool:
    """nan/inf as a number or as the text `--training-arg x=nan` leaves (TrainingArguments would take it)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")


def build_config(flat: dict) -> RunConfig:
    """A RunConfig from a flat {name: value} mapping (YAML keys and flags; None = not given), validated.

    Keys that are not safekeel options but are `TrainingArguments` fields pass through to it."""
    from transformers import TrainingArguments

    hf_fields = {f.name for f in fields(TrainingArguments)}
    given = {}
    for raw, value in flat.items():
        key = normalise_key(raw)
        if value is None:
            continue
        if key in given and given[key] != value:
            raise SafekeelError(f"option {key} given twice with different values")
        given[key] = value
    unknown = [k for k in given if k not in KEYS and k not in hf_fields]
    if unknown:
        raise SafekeelError(f"unknown option(s): {', '.join(sorted(unknown))} (see `safekeel train --help`)")
    cfg = RunConfig()
    preset = str(given.get("preset", "paper"))
    if preset not in PRESETS:
        raise SafekeelError(f"unknown --preset {preset!r}; choose {' or '.join(PRESETS)}")
    for name, value in PRESETS[preset].items():
        setattr(cfg.pact, name, value)
    for key, value in given.items():
        if key in KEYS:
            section, name = KEYS[key]
            target = cfg if section is None else getattr(cfg, section)
            setattr(target, name, _coerce(type(target), name, value))
        else:  # another TrainingArguments field: validated when the arguments are built (`guard.preflight`)
            if _non_finite(value):
                raise SafekeelError(f"--{key.replace('_', '-')} must be a finite number, got {value!r}")
            cfg.training.extra[key] = value
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Check option combinations and fill in the scope-dependent ablation defaults (in place)."""
    p = cfg.pact
    if cfg.method not in METHODS:
        raise SafekeelError(f"unknown --method {cfg.method!r}; choose {', '.join(METHODS)}")
    if p.kl_scope not in ("safety", "full"):
        raise SafekeelError(f"--kl-scope must be full or safety, got {p.kl_scope!r}")
    if cfg.method == "kl":
        p.kl_scope = "full"
    if p.kl_scope == "full":  # Table 5's first rung: no safety set, so no weights, calibration or decay
        explicit = [n for n in ("weights", "calibration", "decay") if getattr(p, n)]
        if explicit:
            raise SafekeelError(f"--kl-scope full is the plain full-vocabulary KL: --{'/--'.join(explicit)} on "
                                "does not apply (use --kl-scope safety)")
        if p.safety_mass:
            raise SafekeelError("--safety-mass on needs --kl-scope safety (the full-vocabulary KL holds the mass already)")
        p.weights = p.calibration = p.decay = False
    else:
        p.weights = True if p.weights is None else p.weights
        p.calibration = True if p.calibration is None else p.calibration
        p.decay = True if p.decay is None else p.decay
    if p.safety_mass and p.temperature != 1.0:
        raise SafekeelError(f"--safety-mass on needs temperature 1 (the preset {p.preset} uses {p.temperature}); "
                            "add --temperature 1")
    for name, low in (("lambda_kl", 0.0), ("temperature", 1e-9), ("threshold", 1e-9)):
        if getattr(p, name) < low:
            raise SafekeelError(f"--{name.replace('_', '-')} must be {'>= 0' if low == 0 else '> 0'}, got {getattr(p, name)}")
    if not 0 < p.threshold <= 1:
        raise SafekeelError(f"--threshold must be in (0, 1], got {p.threshold}")
    if p.n < 0 or (p.decay and p.tau <= 0):
        raise SafekeelError(f"--n must be >= 0 and --tau > 0 (got n={p.n}, tau={p.tau})")
    if p.k is not None and p.k <= 0:
        raise SafekeelError(f"--k must be positive, got {p.k}")
    if not 0.0 <= cfg.poison_ratio <= 1.0:
        raise SafekeelError(f"--poison-ratio must be between 0 and 1, got {cfg.poison_ratio}")
    if cfg.num_examples is not None and cfg.num_examples <= 0:
        raise SafekeelError(f"--num-examples must be positive, got {cfg.num_examples}")
    if cfg.reference_cache not in ("auto", "on", "off"):
        raise SafekeelError(f"--reference-cache must be auto, on or off, got {cfg.reference_cache!r}")
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
    if not 0 <= t.seed < 2**32:  # numpy's seeding range, which transformers' set_seed uses
        raise SafekeelError(f"--seed must be between 0 and 2**32 - 1, got {t.seed}")
    if t.dataloader_num_workers < 0:
        raise SafekeelError(f"--dataloader-num-workers must be >= 0, got {t.dataloader_num_workers}")
    if cfg.reference_batch_size <= 0:
        raise SafekeelError(f"--reference-batch-size must be positive, got {cfg.reference_batch_size}")
    from safekeel.training.checkpoints import resume_value

    cfg.resume = resume_value(cfg.resume)
    if cfg.overwrite and cfg.resume is not None:
        raise SafekeelError("--overwrite and --resume are exclusive: --overwrite starts over, --resume continues")
    if cfg.lora.load_in_4bit and cfg.lora.full:
        raise SafekeelError("--load-in-4bit (QLoRA) trains LoRA adapters; it cannot be combined with --full")
    for name in ("model", "dataset", "output_dir"):
        if not getattr(cfg, name):
            raise SafekeelError(f"--{name.replace('_', '-')} is required")
    if cfg.method == "pact" and p.kl_scope == "safety" and not cfg.tokens:
        raise SafekeelError("--method pact needs --tokens (a safety-token file from `safekeel tokens identify`)")
