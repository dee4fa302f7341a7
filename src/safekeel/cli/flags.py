"""Helpers shared by subcommand parsers.

Every long flag is accepted with dashes and with underscores (`--max-new-tokens` and
`--max_new_tokens`), as TRL users expect.
"""

from __future__ import annotations

import argparse


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *aliases: str, **kwargs):
    """Add `--name` plus its underscore (or dash) twin. `name` is given with dashes, e.g. "max-new-tokens"."""
    dashed = "--" + name.replace("_", "-")
    underscored = "--" + name.replace("-", "_")
    flags = [dashed] + ([underscored] if underscored != dashed else []) + list(aliases)
    kwargs.setdefault("dest", name.replace("-", "_"))
    return parser.add_argument(*flags, **kwargs)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_model_flags(parser: argparse.ArgumentParser, *, name: str = "model", required: bool = True) -> None:
    """--model, --adapter, --dtype, --device, --trust-remote-code."""
    add_flag(parser, name, required=required,
             help="hub id, local directory, .gguf file or packaged name (see `safekeel models list`)")
    add_flag(parser, "adapter", default=None, help="optional PEFT LoRA adapter directory on top of the model")
    add_flag(parser, "dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
             help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    add_flag(parser, "device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_flag(parser, "trust-remote-code", action="store_true", default=False,
             help="allow the model repository's own Python code (off unless you ask)")
