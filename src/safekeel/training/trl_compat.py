"""TRL's names in a `safekeel train` config: what a TRL recipe holds beyond transformers' TrainingArguments.

A TRL user's YAML or flags name options of TRL's `ModelConfig` (model and PEFT), `SFTConfig` (data and
loss) and a few TrainingArguments that mean "evaluate" or "upload". Each is either mapped to safekeel's
option (`RENAMED`, `use_peft`, `warmup_ratio`), accepted when its value describes what safekeel does anyway
(`FIXED`: `packing: false`, `lora_task_type: CAUSAL_LM`), or refused with one line saying what safekeel does
instead. Nothing is silently ignored. docs/configuration.md, "TRL-compatible configuration", has the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from safekeel.defences.base import parse_bool
from safekeel.errors import SafekeelError

# TRL / transformers spellings of safekeel's options (same meaning); config.ALIASES includes these
RENAMED = {"torch_dtype": "dtype", "max_seq_length": "max_length", "evaluation_strategy": "eval_strategy"}

NO_EVAL = ("`safekeel train` has no evaluation set (it trains only); leave eval_strategy at no and evaluate the "
           "result with `safekeel eval`")


@dataclass(frozen=True)
class Fixed:
    """A TRL option whose behaviour safekeel fixes: `accepts` are the values that describe what safekeel does
    anyway; any other value is refused with `why`. `kind` types its flag (str, bool or list); with
    `only_with`, the option changes nothing (in TRL either) unless that option is on, so then any value goes."""

    source: str
    accepts: tuple
    why: str
    kind: str = "str"
    only_with: str | None = None


_PLAIN_LORA = "safekeel trains plain LoRA adapters (scale lora_alpha / lora_r) on --lora-target-modules"
_ANSWER_LOSS = ("safekeel's loss is always on the last assistant answer's tokens only (the prompt, earlier turns "
                "included, is context)")
_ROWS = "safekeel trains on chat rows (a messages column, or prompt/response columns), one example per row"
_TOKENIZER = "safekeel uses the tokenizer's own chat template and special tokens (pad = eos when it has none)"
_QLORA = "safekeel's --load-in-4bit is QLoRA with NF4 and nested (double) quantisation, stored as uint8"

FIXED: dict[str, Fixed] = {
    # TRL ModelConfig
    "model_revision": Fixed("ModelConfig", ("main",), "safekeel loads a hub model's main revision; for another, "
                            "download it (`hf download MODEL --revision REV --local-dir DIR`) and give --model DIR"),
    "attn_implementation": Fixed("ModelConfig", (), "safekeel loads models with transformers' default attention "
                                 "implementation (sdpa where the model supports it)"),
    "lora_task_type": Fixed("ModelConfig", ("CAUSAL_LM",), "safekeel fine-tunes causal language models"),
    "use_rslora": Fixed("ModelConfig", (False,), _PLAIN_LORA, "bool"),
    "use_dora": Fixed("ModelConfig", (False,), _PLAIN_LORA, "bool"),
    "lora_target_parameters": Fixed("ModelConfig", (None, ()), _PLAIN_LORA, "list"),
    "lora_modules_to_save": Fixed("ModelConfig", (None, ()), "safekeel trains the LoRA adapters only; --full (or "
                                  "use_peft: false) trains every weight", "list"),
    "load_in_8bit": Fixed("ModelConfig", (False,), "safekeel's quantised training is 4-bit QLoRA (--load-in-4bit)",
                          "bool"),
    "bnb_4bit_quant_type": Fixed("ModelConfig", ("nf4",), _QLORA, only_with="load_in_4bit"),
    "use_bnb_nested_quant": Fixed("ModelConfig", (True,), _QLORA, "bool", only_with="load_in_4bit"),
    "bnb_4bit_quant_storage": Fixed("ModelConfig", (None, "uint8"), _QLORA, only_with="load_in_4bit"),
    # TRL SFTConfig (fields that are not TrainingArguments')
    "dataset_text_field": Fixed("SFTConfig", (), _ROWS),
    "packing": Fixed("SFTConfig", (False,), "safekeel never packs rows: each example is one prompt and its "
                     "answer, which its collator and the answer-token regularisers need", "bool"),
    "padding_free": Fixed("SFTConfig", (False,), "safekeel pads each batch to its longest row", "bool"),
    "eval_packing": Fixed("SFTConfig", (None, False), NO_EVAL, "bool"),
    "completion_only_loss": Fixed("SFTConfig", (None, True), _ANSWER_LOSS, "bool"),
    "assistant_only_loss": Fixed("SFTConfig", (True,), _ANSWER_LOSS, "bool"),
    "loss_type": Fixed("SFTConfig", ("nll",), "safekeel's task loss is the answer tokens' cross-entropy (nll), "
                       "plus what --method adds"),
    "truncation_mode": Fixed("SFTConfig", ("keep_start",), "safekeel keeps the prompt and cuts the answer's end "
                             "to fit --max-length (a row whose prompt alone is too long is dropped)"),
    "dataset_kwargs": Fixed("SFTConfig", (None, ()), _ROWS),
    "dataset_num_proc": Fixed("SFTConfig", (None,), "safekeel tokenises the rows itself, in the training process"),
    "dataset_batch_size": Fixed("SFTConfig", (None,), "safekeel tokenises the rows itself, in the training process"),
    "shuffle_dataset": Fixed("SFTConfig", (False,), "the Trainer's sampler shuffles the rows every epoch (--seed)",
                             "bool"),
    "chat_template_path": Fixed("SFTConfig", (None,), _TOKENIZER),
    "eos_token": Fixed("SFTConfig", (None,), _TOKENIZER),
    "pad_token": Fixed("SFTConfig", (None,), _TOKENIZER),
    "pad_to_multiple_of": Fixed("SFTConfig", (None,), "safekeel pads each batch to its longest row"),
    "activation_offloading": Fixed("SFTConfig", (False,), "not supported; --gradient-checkpointing saves memory "
                                   "instead", "bool"),
    "model_init_kwargs": Fixed("SFTConfig", (None, ()), "give safekeel's own options instead (--dtype, "
                               "--trust-remote-code, --load-in-4bit)"),
    "use_liger": Fixed("SFTConfig", (False,), "an old TRL name; transformers' --use-liger-kernel is the option",
                       "bool"),
}


def _typed(name: str, fixed: Fixed, value):
    """The value as its kind (flags give text, YAML gives types); lists and mappings as tuples for comparing."""
    if value is None:
        return None
    if fixed.kind == "bool":
        return parse_bool(value, name)
    if isinstance(value, list | tuple | dict):
        return tuple(value)
    return value


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def check_fixed(name: str, value, given: dict) -> None:
    """SafekeelError unless `value` of FIXED option `name` is one safekeel already behaves as."""
    fixed = FIXED[name]
    if fixed.only_with and not parse_bool(given.get(fixed.only_with) or False, fixed.only_with):
        return  # meaningless without that option, in TRL as here
    typed = _typed(name, fixed, value)
    if typed in fixed.accepts:
        return
    ok = [_shown(v) for v in fixed.accepts if v not in (None, ())]
    tail = f"; only {' or '.join(ok)} is accepted" if ok else "; remove it"
    raise SafekeelError(f"{name} {_shown(value)}: TRL {fixed.source} setting that safekeel handles differently: "
                        f"{fixed.why}{tail}")


def _use_peft(given: dict) -> None:
    """TRL's `use_peft` (true: LoRA, safekeel's default; false: full fine-tuning) as safekeel's `full`."""
    peft = parse_bool(given.pop("use_peft"), "use_peft")
    if "full" in given and parse_bool(given["full"], "full") == peft:
        raise SafekeelError(f"use_peft {_shown(peft)} and full {_shown(peft)} contradict each other (use_peft: "
                            "false is full fine-tuning, i.e. full: true); give one of them")
    given["full"] = not peft


def _warmup_ratio(given: dict, training_names: dict) -> None:
    """transformers 5 dropped `warmup_ratio`: `warmup_steps` below 1 is the ratio now."""
    if "warmup_ratio" in training_names:
        return  # an older transformers: a TrainingArguments field of its own
    ratio = given.pop("warmup_ratio")
    if "warmup_steps" in given:
        raise SafekeelError("give warmup_ratio or warmup_steps, not both")
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise SafekeelError(f"--warmup-ratio: expected a number, got {ratio!r}") from None
    if not 0.0 <= ratio < 1.0:  # transformers reads warmup_steps >= 1 as a number of steps
        raise SafekeelError(f"--warmup-ratio must be in [0, 1), got {ratio}")
    given["warmup_steps"] = ratio


def _no_eval_or_upload(given: dict) -> None:
    """TrainingArguments that would make the Trainer evaluate or upload, refused before anything loads
    (`eval_strategy: no` reads as false in YAML, which build_config turns back into no)."""
    strategy = str(getattr(given.get("eval_strategy"), "value", given.get("eval_strategy"))).strip().lower()
    if strategy in ("steps", "epoch"):  # other values than these and no: TrainingArguments says what it takes
        raise SafekeelError(f"eval_strategy {strategy}: {NO_EVAL}")
    for name in ("do_eval", "do_predict", "eval_on_start", "load_best_model_at_end"):
        if name in given and parse_bool(given[name], name):
            raise SafekeelError(f"{name} true: {NO_EVAL}")
    if "push_to_hub" in given and parse_bool(given["push_to_hub"], "push_to_hub"):
        raise SafekeelError("push_to_hub true: `safekeel train` does not upload (a run never needs the network "
                            "once its inputs are loaded); upload the output directory afterwards, e.g. "
                            "`hf upload REPO OUTPUT_DIR`")


def translate(given: dict, training_names: dict) -> dict:
    """`given` ({normalised name: value}) with TRL's names mapped to safekeel's, FIXED ones checked and
    dropped, and evaluate/upload requests refused; SafekeelError naming the option otherwise."""
    given = dict(given)
    if "use_peft" in given:
        _use_peft(given)
    if "warmup_ratio" in given:
        _warmup_ratio(given, training_names)
    for name in [k for k in given if k in FIXED]:
        check_fixed(name, given[name], given)
    _no_eval_or_upload(given)
    return {k: v for k, v in given.items() if k not in FIXED}
