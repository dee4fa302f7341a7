"""The `Defence` base class: what a training-time defence may hook into, every hook optional.

A defence is one module under `safekeel/defences/` with a `Defence` subclass and an options dataclass,
plus one line in `registry.DEFENCES` (or a `register_defence` call). The trainer (`training/trainer.py`, its loss
and hooks in `training/loss_step.py`, shared with the TRL integration) calls the hooks in this order (docs/design.md, "Defence hooks"):

    check(cfg)                      cheap checks before anything is loaded (missing inputs: one line)
    setup(ctx)                      the model before adapters, its tokenizer, rows, tokens, device
    data_plan(ctx) -> DataPlan      other datasets and which one each optimizer step draws from
    configure_model(model)          after LoRA wrapping (freeze layers, add hooks)
    callbacks() -> [TrainerCallback]
    per micro-batch:  loss(step) -> LossTerms       per-token CE weights, an extra term, log stats
    per optimizer step:  step_loss(model, state)    a term added once per optimizer step (penalties)
                         before_optimizer_step(model, optimizer, state)   gradients final, not yet clipped
    after_train(model, ctx)         before the model is saved (projections)

Normalisation (why `extra` is a *sum*): the step's loss is (Σ w·CE + Σ extra) / (answer tokens of the
whole accumulated batch on all ranks), so a term summed over answer positions is averaged exactly like
the CE, whatever the batch split; `step_loss` is added once per optimizer step, unnormalised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from safekeel.errors import SafekeelError

if TYPE_CHECKING:  # torch is imported by the trainer; defences only annotate with it here
    from torch import Tensor


@dataclass
class DefenceOptions:
    """Base of a defence's options. Each field becomes a `safekeel train` flag and a YAML key (dashes or
    underscores); put the help in `field(metadata={"help": ...})`, never the default (it is added).
    Optional metadata: "aliases" (extra flag spellings), "choices". A class attribute `PRESETS`
    ({name: {field: value}}) with a `preset` field gives a preset layer under the user's values."""

    PRESETS: ClassVar[dict[str, dict]] = {}

    def finalize(self) -> None:
        """Check combinations and fill value-dependent defaults (in place); raise SafekeelError."""

    @classmethod
    def build(cls, given: dict) -> DefenceOptions:
        """Defaults < preset < `given` ({field: value}, values cast to the field types), then finalize."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict = {}
        if "preset" in names:
            preset = str(given.get("preset", cls.preset))  # type: ignore[attr-defined]
            if preset not in cls.PRESETS:
                raise SafekeelError(f"unknown --preset {preset!r}; choose {' or '.join(cls.PRESETS)}")
            values.update(cls.PRESETS[preset])
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values.update({k: coerce(types[k], k, v) for k, v in given.items() if k in names})
        options = cls(**values)
        options.finalize()
        return options


@dataclass
class NoOptions(DefenceOptions):
    """For defences without options."""


@dataclass
class TrainContext:
    """What `setup`, `data_plan` and `after_train` see. `model` is the model before LoRA wrapping in
    `setup` (so a defence can read the aligned weights) and the trained model in `after_train`."""

    config: Any  # training.config.RunConfig
    model: Any
    tokenizer: Any
    rows: list[dict]  # the training rows (chat format, `harmful` flag)
    tokens: Any  # tokens.artifact.SafetyTokens cut to K, or None
    device: Any  # torch.device
    args: Any = None  # transformers.TrainingArguments
    output_dir: Any = None  # pathlib.Path
    # rows -> collated batches (answer frame, on `device`, row order kept); set by the trainer's set-up
    batcher: Callable[[list[dict], int], list[dict]] | None = None
    cache: dict = field(default_factory=dict)  # what the shared input loaders (defences/inputs.py) keep

    def batches(self, rows: list[dict], batch_size: int = 4) -> list[dict]:
        """Collated batches of chat `rows` on `device`: input_ids, attention_mask [B, L], answer_index,
        answer_targets, answer_mask [B, A], harmful [B] (training/collate.py). `losses.answer_ce(model,
        batch)` gives their per-token cross-entropy."""
        if self.batcher is None:
            raise SafekeelError("this TrainContext has no batcher (built outside `safekeel.training.prepare`)")
        return self.batcher(rows, batch_size)


@dataclass
class StepState:
    """One micro-batch, after the fine-tuned model's forward. Answer frame [B, A]: column t = answer
    position t of each row (collate.py). Tensors "with graph" carry gradients to the model."""

    batch: dict  # the collated batch (input_ids [B, L], attention_mask, answer_index/mask/targets [B, A], harmful [B])
    logits: Tensor  # [B, L - logits_start, V] fine-tuned logits (with graph) from input column logits_start on
    mask: Tensor  # [B, A] bool, the real answer positions
    ce: Tensor  # [B, A] per-token cross-entropy (with graph), 0 off the mask
    ft_k: Tensor | None  # [B, A, K] fine-tuned logits on the safety tokens (with graph); None without tokens
    ft_lse: Tensor | None  # [B, A] fine-tuned full-vocabulary log-sum-exp (with graph)
    safety_refs: Callable[[bool], dict] | None  # need_lse -> {"ref_full", "ref_post", "ref_lse"?} [B, A, (K)]
    full_refs: Callable[[], Tensor] | None  # -> reference logits [B, A, V] at the answer positions
    target_refs: Callable[[], Tensor] | None = None  # -> reference log p(y_t) [B, A] of the answer tokens
    model: Any = None  # the model being trained (wrapped as the Trainer runs it)
    global_step: int = 0  # optimizer steps done before this micro-batch
    phase: str = "train"  # "train" (the only phase today; monitors will add others)
    source: str = "main"  # the data-plan source this micro-batch came from
    logits_start: int = 0  # the input column of logits[:, 0]

    def answer_logits(self) -> Tensor:
        """[B, A, V] fine-tuned logits at the answer positions (with graph)."""
        from safekeel.losses import gather_frame

        index = (self.batch["answer_index"] - self.logits_start).clamp(min=0)
        return gather_frame(self.logits, index)


@dataclass
class LossTerms:
    """What `loss(step)` returns. `token_weights` [B, A] multiply the per-token CE (None = 1);
    `extra` is a scalar summed over the batch's answer positions (coefficient included; None = 0);
    `stats` maps a log name to per-row (sum [B], count [B]), logged as sum/count overall and for the
    harmful and benign rows."""

    token_weights: Tensor | None = None
    extra: Tensor | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class DataPlan:
    """Extra datasets and a schedule: `sources` {name: chat rows} join the user's data ("main");
    `schedule(global_step)` names the source every micro-batch of that optimizer step draws from."""

    sources: dict[str, list[dict]]
    schedule: Callable[[int], str]


class Defence:
    """Base class: plain SFT behaviour. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""  # one line for `safekeel methods`
    paper: ClassVar[str] = ""  # citation (and link) of the method's paper
    options_class: ClassVar[type[DefenceOptions]] = NoOptions
    supports: ClassVar[tuple[str, ...]] = ("lora", "full")  # fine-tuning modes it works with
    # inputs it uses that have a default ({RunConfig field: what it is and the default}); `needs()` lists
    # the ones it cannot train without
    optional_inputs: ClassVar[dict[str, str]] = {}
    multi_gpu: ClassVar[str] = "DDP, FSDP, DeepSpeed"  # what `accelerate launch` setups it supports
    sharded: ClassVar[bool] = True  # False: it reads whole parameters or gradients, so FSDP/DeepSpeed are refused

    def __init__(self, options: DefenceOptions | None = None):
        self.options = options if options is not None else self.options_class()

    # -- declared needs (checked before anything loads) ----------------------------------------------
    @property
    def reference(self) -> str | None:
        """None (no reference), "safety" (the reference's K safety logits, cached or live), "target"
        (the reference's log-probability of each answer token, live) or "full" (the reference's
        full-vocabulary logits, live). The reference is the model before fine-tuning."""
        return None

    def needs(self) -> dict[str, str]:
        """{RunConfig field: what it is} of the inputs this defence cannot train without."""
        return {}

    def check(self, cfg) -> None:
        """Refuse a missing input or an unsupported mode with one line, before any load."""
        for name, what in self.needs().items():
            if not getattr(cfg, name, None):
                raise SafekeelError(f"--method {self.name} needs --{name.replace('_', '-')} ({what})")
        mode = "full" if cfg.lora.full else "lora"
        if mode not in self.supports:
            raise SafekeelError(f"--method {self.name} does not support {'--full' if mode == 'full' else 'LoRA'} "
                                f"fine-tuning (it supports: {', '.join(self.supports)})")
        backend = sharded_backend(cfg.training)
        if backend and not self.sharded:
            raise SafekeelError(f"--method {self.name} works with DDP, not {backend}: it reads whole parameters or "
                                f"gradients, which {backend} shards; use plain `accelerate launch` / torchrun")

    def select_tokens(self, tokens):
        """The safety tokens this defence uses: the artifact's top K (`k` option) or top 50."""
        return tokens.top(getattr(self.options, "k", None) or min(50, tokens.k))

    def post_positions(self) -> int | None:
        """How many answer positions need the no-prompt reference view (0 none, None all)."""
        return 0

    # -- hooks (all optional) ------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        pass

    def data_plan(self, ctx: TrainContext) -> DataPlan | None:
        return None

    def configure_model(self, model):
        return model

    def callbacks(self) -> list:
        return []

    def loss(self, step: StepState) -> LossTerms:
        return LossTerms()

    def step_loss(self, model, state) -> Tensor | None:
        return None

    def before_optimizer_step(self, model, optimizer, state) -> dict | None:
        """Edit the accumulated gradients in place; may return per-step log values {name: float}."""
        return None

    def after_train(self, model, ctx: TrainContext) -> None:
        pass


def sharded_backend(training) -> str | None:
    """"FSDP" or "DeepSpeed" when the run shards the model: `training` is a TrainingArguments or the
    run's training options (a mapping); `accelerate launch --use_fsdp/--use_deepspeed` sets the env."""
    import os

    get = training.get if isinstance(training, dict) else (lambda key: getattr(training, key, None))
    env = os.environ
    if get("fsdp") or env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "FSDP"
    if get("deepspeed") or env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        return "DeepSpeed"
    return None


def row_sum(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(per-row sum of x over the mask [B], per-row count [B]): the `stats` format."""
    import torch

    return torch.where(mask, x, torch.zeros_like(x)).sum(1), mask.sum(1).to(x.dtype)


def parse_bool(value, name: str) -> bool:
    """on/off, true/false, yes/no, 1/0 (YAML already turns on/off into booleans)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1", "y", "t"):
        return True
    if text in ("off", "false", "no", "0", "n", "f"):
        return False
    raise SafekeelError(f"--{name.replace('_', '-')} must be on or off, got {value!r}")


def type_name(t) -> str:
    """A field annotation as text: "float", "int | None", "str | bool | None" (for string annotations,
    real types and typing objects alike; None first or last does not matter to the callers)."""
    if isinstance(t, str):
        return t
    if isinstance(t, type):
        return t.__name__
    args = getattr(t, "__args__", None)
    if args:  # X | Y, Optional[X], Union[X, Y]
        names = [type_name(a) for a in args]
        names = [n for n in names if n != "NoneType"] + (["None"] if "NoneType" in names else [])
        return " | ".join(names)
    return str(t).replace("typing.", "")


def coerce(ftype, name: str, value):
    """Cast `value` to a dataclass field's declared type (YAML gives ints for floats, flags give text)."""
    if value is None:
        return None
    ftype = type_name(ftype)
    try:
        if ftype.startswith("bool"):
            return parse_bool(value, name)
        if ftype.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if ftype.startswith("float"):
            number = float(value)
            if not math.isfinite(number):  # argparse and YAML (.nan, .inf) both accept these
                raise SafekeelError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
            return number
        if ftype.startswith("str") and not ftype.startswith("str | bool"):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise SafekeelError(f"--{name.replace('_', '-')}: expected {ftype.split(' |')[0]}, got {value!r}") from None
    return value
