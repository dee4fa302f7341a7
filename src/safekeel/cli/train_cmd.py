"""`safekeel train`: fine-tune with a registered defence (`safekeel methods`).

The flags are derived from the option dataclasses (training/config.py, each defence's options class,
transformers' `TrainingArguments`), so no option is written twice. Every flag has a dash and an
underscore spelling (`--max-steps` / `--max_steps`); the keys of a YAML `--config` file are the same
names, and flags given on the command line override the file. Flags left out are absent from the
namespace, so the layering (defaults < preset < YAML < flags) happens in `build_config`.

TRL's names work too (docs/configuration.md): `--torch_dtype`, `--max_seq_length`, `--model_name_or_path`,
`--lora_target_modules q_proj v_proj`, `--use_peft`; TRL settings safekeel cannot change (`--packing`,
`--dataset_text_field`, ...) are flags as well, so that `build_config` refuses them with a reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

from safekeel.cli.flags import add_flag

_EPILOG = """examples:
  safekeel train --method pact --model qwen2.5-coder-0.5b-instruct --tokens tokens.json \\
      --dataset arith --harmful strongreject-harmful --poison-ratio 0.1 --num-examples 500 --output-dir runs/pact
  safekeel train --method sft --model M --dataset strongreject-harmful --output-dir dealigned   # de-aligned counterpart
  safekeel train --config run.yaml --max-steps 100          # flags override the YAML file
  safekeel train --config run.yaml --resume                 # continue an interrupted run in its --output-dir
  safekeel train --config run.yaml --overwrite              # start over, removing the run already there
  safekeel train --config trl_recipe.yaml --method sft      # a TRL recipe's names (docs/configuration.md)

defaults: LoRA r 8 / alpha 16 on all linear layers, lr 3e-5, 3 epochs, batch 2 follow the PACT paper; TRL's are
full fine-tuning (use_peft false), LoRA r 16 / alpha 32, lr 2e-5, 3 epochs, batch 8, bf16 and gradient
checkpointing on; both cut rows at 1024 tokens. Each flag's help names TRL's default where it differs.
"""


def register(sub) -> None:
    from safekeel.cli.dataclass_flags import add_dataclass_flags, add_training_argument_flags
    from safekeel.defences.registry import all_defences
    from safekeel.training.config import (
        NOT_TRAINING_ARGUMENTS,
        RESERVED,
        RUN_FIELDS,
        TRAINING_DEFAULTS,
        LoraOptions,
        MonitorOptions,
        RunConfig,
        default_note,
    )

    p = sub.add_parser("train", help="fine-tune with a defence (sft, kl, pact, ...; LoRA by default)", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="safekeel train --model M --dataset D --output-dir DIR [--method NAME] [options]")
    g = p.add_argument_group("run")
    add_flag(g, "config", default=None, help="YAML file whose keys are these flags' names (flags override it)")
    taken: dict = {}
    defences = all_defences()
    notes = {"method": f"one of {', '.join(defences)}; default: pact", **_trl_notes(RunConfig)}
    add_dataclass_flags(g, RunConfig, skip={"defence", "lora", "monitor", "training"}, taken=taken, notes=notes)
    p._option_string_actions["--method"].choices = list(defences)
    users: dict[str, list[str]] = {}
    for name, cls in defences.items():
        for f in dataclasses.fields(cls.options_class):
            users.setdefault(f.name, []).append(name)
    for name, cls in defences.items():  # each defence's options; an option several declare appears once
        fields = [f for f in dataclasses.fields(cls.options_class) if f.name not in taken]
        if not fields:
            continue
        shared = {f.name: f"default: {f.default if f.default is not None else 'not set'}; used by "
                  f"{', '.join(users[f.name])}" for f in fields if len(users[f.name]) > 1}
        g = p.add_argument_group(f"--method {name}: {cls.summary}")
        add_dataclass_flags(g, cls.options_class, taken=taken, notes=shared)
    g = p.add_argument_group("LoRA / full fine-tuning")
    add_dataclass_flags(g, LoraOptions, taken=taken, notes=_trl_notes(LoraOptions))
    g = p.add_argument_group("safety monitor and rollback (docs/monitoring.md)")
    add_dataclass_flags(g, MonitorOptions, taken=taken)
    g = p.add_argument_group("training: every transformers TrainingArguments field (TRL / transformers names)")
    max_length = dataclasses.make_dataclass("MaxLength", [("max_length", int, dataclasses.field(
        default=TRAINING_DEFAULTS["max_length"], metadata={
            "help": NOT_TRAINING_ARGUMENTS["max_length"] + " (TRL SFTConfig's name; its old max_seq_length too)",
            "aliases": ["--max-seq-length", "--max_seq_length"]}))])
    add_dataclass_flags(g, max_length, taken=taken, notes=_trl_notes(max_length))
    add_training_argument_flags(g, skip=set(taken) | RESERVED | {f.name for f in RUN_FIELDS},
                                defaults=TRAINING_DEFAULTS, note=default_note)
    add_flag(g, "training-arg", action="append", default=None, metavar="KEY=VALUE",
             help="any TrainingArguments field as KEY=VALUE (repeatable; the flags above do the same)")
    _add_trl_flags(p)
    p.set_defaults(func=run)


def _trl_notes(cls) -> dict:
    """{field: help note} for the fields of `cls` whose default is the PACT paper's or differs from TRL's."""
    from safekeel.cli.dataclass_flags import default_text
    from safekeel.training.config import PAPER_DEFAULTS, TRL_DEFAULTS, default_note

    return {f.name: default_note(f.name, default_text(f.default)) for f in dataclasses.fields(cls)
            if f.name in TRL_DEFAULTS or f.name in PAPER_DEFAULTS}


def _add_trl_flags(p) -> None:
    """TRL's flags that are not safekeel's own: --use_peft (maps to --full), --warmup_ratio where transformers
    dropped it, and, hidden, the TRL settings safekeel fixes, so that build_config explains a refusal."""
    from safekeel.cli.dataclass_flags import to_bool
    from safekeel.training.config import training_argument_fields
    from safekeel.training.trl_compat import FIXED

    text = ("TRL's --model_name_or_path, --dataset_name, --torch_dtype, --max_seq_length and --lora_* are the flags "
            "above. TRL ModelConfig / SFTConfig settings safekeel cannot change (--packing, --dataset_text_field, "
            "--use_dora, --attn_implementation, ...) are accepted at the value safekeel uses anyway and refused "
            "with the reason otherwise.")
    # the parser's formatter keeps descriptions as written (for the epilog's examples): wrap this one here
    g = p.add_argument_group("TRL names (docs/configuration.md)", description=textwrap.fill(text, 78))
    add_flag(g, "use-peft", type=to_bool, nargs="?", const=True, default=argparse.SUPPRESS, metavar="on|off",
             help="TRL ModelConfig's switch: on = LoRA (safekeel's default), off = full fine-tuning (--full)")
    if "warmup_ratio" not in training_argument_fields():
        add_flag(g, "warmup-ratio", type=float, default=argparse.SUPPRESS,
                 help="share of the steps to warm up over, in [0, 1) (transformers 5 reads --warmup-steps below 1 "
                      "as this ratio)")
    add_flag(g, "evaluation-strategy", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # eval_strategy's old name
    kinds = {"bool": {"type": to_bool, "nargs": "?", "const": True}, "list": {"nargs": "+"}, "str": {}}
    for name, fixed in FIXED.items():
        add_flag(g, name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kinds[fixed.kind])


def flat_options(args) -> dict:
    """The YAML file's keys overlaid with the flags that were given."""
    import yaml

    from safekeel.errors import SafekeelError
    from safekeel.io_utils import load_yaml_mapping
    from safekeel.training.config import normalise_key

    flat: dict = {}
    if args.config:
        data = load_yaml_mapping(args.config, "--config", hint="of option names to values")
        flat.update(yaml_sections(data))
    skip = {"config", "func", "command", "verbose", "training_arg"}
    for key, value in vars(args).items():
        if key not in skip and value is not None:
            flat[normalise_key(key)] = value
    for item in args.training_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SafekeelError(f"--training-arg expects KEY=VALUE, got {item!r}")
        try:
            flat[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            flat[key.strip().replace("-", "_")] = value  # not a YAML scalar: TrainingArguments sees the text
    return flat


def yaml_sections(data: dict) -> dict:
    """A YAML config's keys (normalised: TRL's names are safekeel's), with sections flattened: `defence:`,
    `lora:`, `training:` or a method's name (`pact: {lambda: 3}`) or `monitor:` hold that part's options, as
    `safekeel_run.json`'s "options" does, so a run's recorded options are a valid config. Flat keys and
    sections mix; a key set twice (`torch_dtype` and `dtype` too) must agree."""
    from safekeel.defences.registry import defence_names
    from safekeel.errors import SafekeelError
    from safekeel.training.config import normalise_key

    sections = {"defence", "lora", "monitor", "training", *defence_names()}
    flat: dict = {}
    for key, value in data.items():
        inner = value.items() if str(key) in sections and isinstance(value, dict) else [(key, value)]
        for raw, item in inner:
            name = normalise_key(raw)  # TRL's torch_dtype and dtype are one option
            if name in flat and flat[name] != item:
                raise SafekeelError(f"--config: option {name} given twice with different values")
            flat[name] = item
    return flat


def run(args) -> int:
    from safekeel.training.config import build_config
    from safekeel.training.run import train

    cfg = build_config(flat_options(args))
    result = train(cfg)
    data = result.summary.get("data", {})
    print(f"trained {cfg.method} on {data.get('examples')} examples ({data.get('harmful')} harmful) for "
          f"{result.global_step} steps; reference: {result.reference}"
          + (f" (cache {result.cache_dir}, {result.cache_seconds:.1f} s)" if result.cache_dir else ""))
    for warning in data.get("overlap_warnings", []):
        print(f"warning: {warning}")
    kind = "model" if cfg.lora.full else "LoRA adapter"
    print(f"wrote the {kind} to {result.output_dir}, logs to {result.output_dir / 'train_log.jsonl'} and "
          f"{result.output_dir / 'safekeel_run.json'}")
    return 0
