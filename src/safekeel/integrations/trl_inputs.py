"""What `SafetySFTTrainer` (integrations/trl.py) checks and converts before TRL's `SFTTrainer` sees anything.

- `sft_args`: the user's `SFTConfig` (or `TrainingArguments`, converted as TRL converts it), with the few
  fields the two-view collator needs set in place (`skip_prepare_dataset`, `remove_unused_columns=False`,
  `label_names=["labels"]`) and the options that would change the loss or the batches refused.
- `chat_rows`: a TRL conversational dataset (`messages`, or `prompt` + `completion` message lists) as
  safekeel's training rows {"id", "messages", "harmful", "source"} (data/records.py).
- `resolve_defence`: a registered defence by name with its options (keys as in `safekeel train`,
  dashes or underscores, its aliases such as `lambda`), or a ready `Defence`.
- `run_config`: the `RunConfig` a defence's `check` and `setup` read (the mode, LoRA targets, seed,
  `base`, `safety_data`), filled from the TRL run instead of `safekeel train`'s flags.
- `model_and_tokenizer`, `model_spec`, `safety_tokens`: the model (a model id is loaded as TRL loads it),
  its tokenizer, the model as a spec defences can load by, and the defence's top K safety tokens checked
  against the tokenizer.

Every refusal is one SafekeelError line naming the argument to change.
"""

from __future__ import annotations

import dataclasses

from safekeel.errors import SafekeelError

# TRL options that would change what is trained, or how rows are batched, away from `safekeel train`
_ON = bool
_REFUSED = [  # (SFTConfig field, refused when, why and what to do)
    ("packing", _ON, ("packing=True: each batch row must be one example (the answer frame and the no-prompt view "
                      "need it); set packing=False")),
    ("eval_packing", _ON, "eval_packing=True: set it to False (see packing)"),
    ("padding_free", _ON, ("padding_free=True: batches are padded rows (the answer frame needs them); set "
                           "padding_free=False")),
    ("assistant_only_loss", _ON, ("assistant_only_loss=True: the loss is on the last assistant turn (the answer), "
                                  "as in `safekeel train`; leave assistant_only_loss False")),
    ("completion_only_loss", lambda v: v is False, ("completion_only_loss=False: the loss is on the answer tokens "
                                                    "only, as in `safekeel train`; leave completion_only_loss unset")),
    ("loss_type", lambda v: v not in (None, "nll"), ("loss_type: only 'nll' (cross-entropy) plus the defence's "
                                                     "terms is supported")),
    ("label_smoothing_factor", _ON, "label_smoothing_factor: not supported with a defence's loss"),
    ("chat_template_path", lambda v: v is not None, ("chat_template_path: set tokenizer.chat_template before "
                                                     "building the trainer (the rows are tokenised first)")),
]
_REFUSED_KWARGS = {
    "data_collator": "safekeel's two-view collator builds the batches",
    "compute_loss_func": "the loss is CE + the defence's terms",
    "formatting_func": "rows are formatted with the tokenizer's chat template",
}


def sft_args(args, model):
    """The `SFTConfig` to train with: a default one for None, a converted one for `TrainingArguments`."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    if args is None:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
        args = SFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1] or 'model'}-SFT")
    elif isinstance(args, TrainingArguments) and not isinstance(args, SFTConfig):
        values = args.to_dict()
        values["hub_token"] = args.hub_token  # to_dict hides it (TRL converts the same way)
        args = SFTConfig(**values)
    elif not isinstance(args, SFTConfig):
        raise SafekeelError(f"args must be a trl.SFTConfig or transformers.TrainingArguments, got {type(args).__name__}")
    for name, bad, why in _REFUSED:
        if bad(getattr(args, name, None)):
            raise SafekeelError(f"SafetySFTTrainer: {why}")
    # the rows are tokenised by safekeel (both views); TRL must neither re-tokenise nor drop their columns
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    args.remove_unused_columns = False
    args.label_names = ["labels"]
    return args


def refuse_kwargs(kwargs: dict) -> None:
    for name, why in _REFUSED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise SafekeelError(f"SafetySFTTrainer does not take {name}: {why}")


def chat_rows(dataset, name: str) -> list[dict]:
    """Rows {"id", "messages", "harmful", "source"} of a conversational dataset (a `datasets.Dataset` or a
    list of dicts): a `messages` column, or `prompt` and `completion` columns of message lists (TRL's
    conversational prompt-completion format; the completion's last turn is the answer). Optional `id` and
    `harmful` columns (the logs split ce, kl, ... by `harmful`)."""
    from safekeel.data.records import normalise_row

    if dataset is None:
        raise SafekeelError(f"{name} is required")
    if type(dataset).__name__ in ("IterableDataset", "IterableDatasetDict"):
        raise SafekeelError(f"{name} is an IterableDataset: the reference cache needs every row before training; "
                            "pass a datasets.Dataset (e.g. Dataset.from_list(list(stream.take(n))))")
    if isinstance(dataset, dict) or not hasattr(dataset, "__iter__"):
        raise SafekeelError(f"{name} must be a datasets.Dataset or a list of rows, got {type(dataset).__name__}")
    rows = []
    for i, row in enumerate(dataset):
        if not isinstance(row, dict):
            raise SafekeelError(f"{name}: row {i + 1} is not a mapping")
        if row.get("messages") is None:
            row = _prompt_completion(row, f"{name}: row {i + 1}")
        rows.append(normalise_row(row, i, name))
    if not rows:
        raise SafekeelError(f"{name} is empty")
    return rows


def _prompt_completion(row: dict, where: str) -> dict:
    prompt, completion = row.get("prompt"), row.get("completion")
    if prompt is None or completion is None:
        cols = ", ".join(sorted(map(str, row))) or "none"
        raise SafekeelError(f"{where} has no `messages` and no `prompt`/`completion` (columns: {cols}); "
                            "SafetySFTTrainer needs a conversational dataset")
    if isinstance(prompt, str) or isinstance(completion, str):
        raise SafekeelError(f"{where}: `prompt`/`completion` are plain text (TRL's standard format); the defence "
                            "works on chat turns: use lists of {role, content} (conversational format), e.g. "
                            "prompt=[{'role': 'user', 'content': ...}], completion=[{'role': 'assistant', ...}]")
    return {**{k: v for k, v in row.items() if k not in ("prompt", "completion")},
            "messages": list(prompt) + list(completion)}


def resolve_defence(defence, options: dict | None):
    """A `Defence` instance from a registered name and its options, or the instance given."""
    from safekeel.defences.base import Defence
    from safekeel.defences.registry import defence_class

    if isinstance(defence, Defence):
        if options:
            raise SafekeelError("defence_options go with a defence name; a Defence instance carries its own options")
        the = defence
    elif isinstance(defence, str):
        cls = defence_class(defence)
        the = cls(cls.options_class.build(_option_names(cls.options_class, dict(options or {}))))
    else:
        raise SafekeelError(f"defence must be a registered name or a Defence, got {type(defence).__name__}")
    return the


def _option_names(options_class, given: dict) -> dict:
    """{field: value} from keys with dashes or underscores and the fields' aliases; unknown keys refused."""
    names = {f.name: f.name for f in dataclasses.fields(options_class)}
    for f in dataclasses.fields(options_class):
        for alias in f.metadata.get("aliases", ()):
            names.setdefault(alias.lstrip("-").replace("-", "_"), f.name)
    out = {}
    for key, value in given.items():
        norm = str(key).strip().lstrip("-").replace("-", "_")
        if norm not in names:
            known = ", ".join(sorted(n for n, f in names.items() if n == f)) or "none"
            raise SafekeelError(f"unknown defence option {key!r} (options: {known})")
        out[names[norm]] = value
    return out


def run_config(defence, *, model_spec: str, args, tokens: str | None, base, safety_data, full: bool,
               targets: str, quantized: bool):
    """The `RunConfig` a defence's `check(cfg)` and `setup(ctx)` read, for a TRL run."""
    from safekeel.training.config import TRAINING_DEFAULTS, LoraOptions, RunConfig, TrainingOptions

    training = TrainingOptions(TRAINING_DEFAULTS)
    for key in ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                "disable_tqdm", "fsdp", "deepspeed", "max_length"):
        if hasattr(args, key):
            training[key] = getattr(args, key)
    return RunConfig(method=defence.name, model=model_spec, dataset="<SFTTrainer train_dataset>",
                     output_dir=str(args.output_dir), tokens=tokens, base=base, safety_data=safety_data,
                     # no prompt-set overlap checks here: they would fetch benchmark sets while building a trainer
                     overlap_check="none", defence=defence.options,
                     lora=LoraOptions(full=full, lora_target_modules=targets, load_in_4bit=quantized),
                     training=training)


def lora_targets(peft_config, model) -> str:
    """PEFT's target modules as `safekeel train --lora-target-modules` spells them ("all-linear" or a,b,c)."""
    config = peft_config
    if config is None and hasattr(model, "peft_config"):
        config = next(iter(model.peft_config.values()), None)
    targets = getattr(config, "target_modules", None) if config is not None else None
    if targets is None:
        return "all-linear"
    return targets if isinstance(targets, str) else ",".join(sorted(map(str, targets)))


def model_and_tokenizer(model, processing_class, args, kwargs: dict):
    """(model, tokenizer): a model id / path is loaded as TRL loads it (`model_init_kwargs`), before TRL's
    own set-up, because the reference cache needs the model before any adapter is added."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(model, str):
        from trl.trainer.utils import create_model_from_path

        init = dict(args.model_init_kwargs or {})
        if kwargs.get("quantization_config") is not None:
            init["quantization_config"] = kwargs.pop("quantization_config")
        if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            init["device_map"] = None
        init.setdefault("trust_remote_code", args.trust_remote_code)
        name, model = model, create_model_from_path(model, **init)
        args.model_init_kwargs = None  # used here; TRL would warn that an instantiated model ignores them
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
    if processing_class is None:
        name = getattr(model.config, "_name_or_path", "")
        if not name:
            raise SafekeelError("pass processing_class= (the model's tokenizer)")
        processing_class = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
    if not isinstance(processing_class, PreTrainedTokenizerBase):
        raise SafekeelError(f"processing_class must be a tokenizer (vision processors are not supported), got "
                            f"{type(processing_class).__name__}")
    return model, processing_class


def model_spec(model, tok, defence) -> str:
    """The model as `RunConfig.model`: registered in memory when the defence may generate with it or load
    inputs by it (its own refusals as safety data), else just its name."""
    from safekeel.models import in_memory

    if "safety_data" in defence.optional_inputs or "safety_data" in defence.needs():
        return in_memory.register(model, tok)
    return in_memory.model_name(model)


def safety_tokens(tokens, tok, defence):
    """The defence's top K safety tokens, checked against the tokenizer; None when none were given."""
    if tokens is None:
        return None
    from safekeel.tokens.artifact import SafetyTokens
    from safekeel.training.guard import read_tokens

    art = tokens if isinstance(tokens, SafetyTokens) else read_tokens(str(tokens))
    art.check_tokenizer(tok)
    return defence.select_tokens(art)
