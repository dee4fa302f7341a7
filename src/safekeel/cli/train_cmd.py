"""`safekeel train`: fine-tune with SFT, the full-vocabulary KL baseline or PACT.

Every flag has a dash and an underscore spelling (`--max-steps` / `--max_steps`); the keys of a YAML
`--config` file are the same names, and flags given on the command line override the file. Flags left
out stay None here, so the layering (defaults < preset < YAML < flags) happens in `build_config`.
"""

from __future__ import annotations

import argparse

from safekeel.cli.flags import add_flag

_EPILOG = """examples:
  safekeel train --method pact --model qwen2.5-coder-0.5b-instruct --tokens tokens.json \\
      --dataset arith --harmful strongreject-harmful --poison-ratio 0.1 --num-examples 500 --output-dir runs/pact
  safekeel train --method sft --model M --dataset strongreject-harmful --output-dir dealigned   # de-aligned counterpart
  safekeel train --config run.yaml --max-steps 100          # flags override the YAML file
  safekeel train --config run.yaml --resume                 # continue an interrupted run in its --output-dir
  safekeel train --config run.yaml --overwrite              # start over, removing the run already there
"""


def _bool(text) -> bool:
    from safekeel.training.config import parse_bool

    try:
        return parse_bool(text, "flag")
    except Exception:  # noqa: BLE001 - any parse failure is a usage error
        raise argparse.ArgumentTypeError(f"expected on/off or true/false, got {text!r}") from None


def _switch(p, name: str, help: str, *aliases: str) -> None:
    """--name (true), --name true|false|on|off; None when absent."""
    add_flag(p, name, *aliases, nargs="?", const=True, default=None, type=_bool, metavar="on|off", help=help)


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune with SFT, KL or PACT (LoRA by default)", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    add_flag(g, "config", default=None, help="YAML file whose keys are these flags' names (flags override it)")
    add_flag(g, "method", default=None, choices=["sft", "kl", "pact"], help="training method (default pact)")
    add_flag(g, "model", "--model-name-or-path", "--model_name_or_path", default=None,
             help="model to fine-tune: hub id, directory, .gguf or packaged name")
    add_flag(g, "dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
             help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    _switch(g, "trust-remote-code", "allow the model repository's own code")
    add_flag(g, "dataset", "--dataset-name", "--dataset_name", default=None,
             help="task name (arith, sentiment, topic, gsm8k, sst2, agnews), a harmful set, a .jsonl/.csv/.parquet "
                  "file with messages or prompt/response rows, or a hub dataset id")
    add_flag(g, "output-dir", default=None, help="where the adapter (or model), checkpoints and logs go")
    add_flag(g, "tokens", default=None, help="safety-token file from `safekeel tokens identify` (pact needs it)")
    add_flag(g, "harmful", default=None, help="harmful data to mix in: strongreject-harmful, advbench, beavertails, a file")
    add_flag(g, "poison-ratio", type=float, default=None, help="share of harmful rows in the mix (default 0.1)")
    add_flag(g, "num-examples", type=int, default=None, help="rows to train on (with --harmful: default 5000)")
    _switch(g, "with-replacement", "repeat harmful/task rows when a source is smaller than its share")
    add_flag(g, "system", default=None, help="system prompt added to every training row")
    add_flag(g, "overlap-check", default=None,
             help="prompt sets the harmful rows must not overlap, comma-separated (default harmbench; none)")
    add_flag(g, "resume", "--resume-from-checkpoint", "--resume_from_checkpoint", nargs="?", const=True,
             default=None, help="resume from the latest complete checkpoint in --output-dir, or from the given "
                                "one; the options that change training must match the checkpoint's")
    _switch(g, "overwrite", "replace the training run already in --output-dir (its checkpoints, log and adapter "
                            "are removed first)", "--overwrite-output-dir", "--overwrite_output_dir")
    add_flag(g, "reference-cache", default=None, choices=["auto", "on", "off"],
             help="compute the reference's safety-token logits once before training (auto: when it fits on disk)")
    add_flag(g, "reference-cache-dir", default=None, help="root of the reference caches (default ~/.cache/safekeel/reference)")
    add_flag(g, "reference-batch-size", type=int, default=None, help="batch size of the one-off cache pass (default 8)")

    g = p.add_argument_group("PACT / KL (paper §3; presets: paper, reference-code)")
    add_flag(g, "preset", default=None, choices=["paper", "reference-code"],
             help="paper: Eq. 3-8 (T 1, gate σ(ΔI)); reference-code: the authors' code (T 2, gate σ(2(ΔI − b)))")
    add_flag(g, "lambda", "--lambda-kl", "--lambda_kl", dest="lambda_kl", type=float, default=None,
             help="weight of the KL term (default 3)")
    add_flag(g, "k", type=int, default=None, help="top-K safety tokens of the artifact (default 50)")
    add_flag(g, "n", type=int, default=None, help="calibration window N: the gate decays after N answer positions (8)")
    add_flag(g, "tau", type=float, default=None, help="decay constant τ of the gate (8)")
    add_flag(g, "threshold", type=float, default=None, help="top-p mass of the dispersion I(z) (0.9)")
    add_flag(g, "kl-scope", default=None, choices=["full", "safety"],
             help="safety: KL on the safety tokens (PACT); full: full-vocabulary KL (Table 5, first rung)")
    _switch(g, "weights", "weight the reference by the tokens' discrepancy scores (default on)")
    _switch(g, "calibration", "mix in the no-prompt reference view (default on)")
    _switch(g, "decay", "decay the calibration gate after N positions (default on)")
    _switch(g, "safety-mass", "also hold the total probability on the safety tokens (default off; needs T = 1)")
    add_flag(g, "temperature", type=float, default=None, help="KL temperature T (paper 1, reference-code 2)")
    add_flag(g, "gate-scale", type=float, default=None, help="gate slope α (paper 1, reference-code 2)")
    add_flag(g, "gate-bias", type=float, default=None, help="gate bias b (0)")

    g = p.add_argument_group("LoRA / full fine-tuning")
    _switch(g, "full", "full fine-tuning instead of LoRA")
    add_flag(g, "lora-r", "--lora-rank", "--lora_rank", type=int, default=None, help="LoRA rank (8)")
    add_flag(g, "lora-alpha", type=int, default=None, help="LoRA alpha (16)")
    add_flag(g, "lora-dropout", type=float, default=None, help="LoRA dropout (0.05)")
    add_flag(g, "lora-target-modules", default=None, help="comma-separated module names or all-linear (default)")
    _switch(g, "load-in-4bit", "QLoRA: 4-bit base weights (needs a GPU and bitsandbytes)")

    g = p.add_argument_group("training (TRL / transformers names)")
    for name, typ, default_help in (
        ("learning-rate", float, "3e-5"), ("num-train-epochs", float, "3"), ("per-device-train-batch-size", int, "2"),
        ("gradient-accumulation-steps", int, "1"), ("max-steps", int, "-1: use epochs"),
        ("logging-steps", float, "10"), ("save-steps", float, "500"), ("save-total-limit", int, "keep all"),
        ("report-to", str, "none; e.g. tensorboard"), ("seed", int, "42"), ("max-length", int, "1024"),
        ("warmup-steps", float, "0; < 1 is a ratio"), ("lr-scheduler-type", str, "linear"),
        ("weight-decay", float, "0"), ("max-grad-norm", float, "1"), ("optim", str, "adamw_torch"),
        ("dataloader-num-workers", int, "0"),
    ):
        add_flag(g, name, type=typ, default=None, help=f"default {default_help}")
    _switch(g, "bf16", "bf16 mixed precision")
    _switch(g, "fp16", "fp16 mixed precision")
    _switch(g, "gradient-checkpointing", "recompute activations in the backward pass to save memory")
    _switch(g, "disable-tqdm", "no progress bar")
    add_flag(g, "training-arg", action="append", default=None, metavar="KEY=VALUE",
             help="any other transformers TrainingArguments field (repeatable)")
    p.set_defaults(func=run)


def flat_options(args) -> dict:
    """The YAML file's keys overlaid with the flags that were given."""
    import yaml

    from safekeel.errors import SafekeelError

    flat: dict = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise SafekeelError(f"cannot read --config {args.config}: {exc.strerror}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SafekeelError(f"--config {args.config} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise SafekeelError(f"--config {args.config} must be a mapping of option names to values")
        from safekeel.training.config import normalise_key

        flat.update({normalise_key(k): v for k, v in data.items()})
    skip = {"config", "func", "command", "verbose", "training_arg"}
    for key, value in vars(args).items():
        if key not in skip and value is not None:
            flat[key] = value
    for item in args.training_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SafekeelError(f"--training-arg expects KEY=VALUE, got {item!r}")
        try:
            flat[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            flat[key.strip().replace("-", "_")] = value  # not a YAML scalar: TrainingArguments sees the text
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
