"""Command-line flags derived from dataclasses, so an option is declared once (its field).

`add_dataclass_flags(group, cls)` adds `--name` and `--name_with_underscores` for each field, its type
(booleans take on/off, true/false or nothing; a `list=True` field takes several values, as TRL's
`--lora_target_modules q_proj v_proj`), its `metadata` help, aliases and choices, and the field's default
written into the help by the code, never pasted. `add_training_argument_flags` takes
every transformers `TrainingArguments` field from `HfArgumentParser` (its types, choices and help),
marking where safekeel's default differs. Every flag's argparse default is SUPPRESS: the namespace holds
only what was given, so the layering (defaults < preset < YAML < flags) stays in `build_config`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re

SUPPRESS = argparse.SUPPRESS


def to_bool(text) -> bool:
    from safekeel.defences.base import parse_bool

    try:
        return parse_bool(text, "flag")
    except Exception:  # noqa: BLE001 - any parse failure is a usage error
        raise argparse.ArgumentTypeError(f"expected on/off or true/false, got {text!r}") from None


def default_text(value) -> str:
    """A default as the help shows it: on/off for switches, "not set" for None."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def flag_kwargs(f: dataclasses.Field, default_note: str | None = None) -> tuple[list[str], dict]:
    """(option strings, add_argument kwargs) for one dataclass field."""
    meta = dict(f.metadata)
    dashed = "--" + f.name.replace("_", "-")
    names = [dashed] + ([f"--{f.name}"] if "_" in f.name else []) + list(meta.get("aliases", []))
    from safekeel.defences.base import type_name

    ftype = type_name(f.type)
    default = f.default if f.default is not dataclasses.MISSING else None
    note = default_note if default_note is not None else (f"default: {default_text(default)}"
                                                          if default is not None else "")
    text = meta.get("help", "") + (f" ({note})" if note else "")
    kwargs: dict = {"dest": f.name, "default": SUPPRESS, "help": text.replace("%", "%%")}
    if meta.get("list"):  # several values or one comma-separated text; build_config joins them
        kwargs.update(nargs="+", metavar="NAME")
    elif ftype.startswith("str | bool"):  # --resume [CHECKPOINT]
        kwargs.update(nargs="?", const=True, metavar="CHECKPOINT")
    elif ftype.startswith("bool"):
        kwargs.update(nargs="?", const=True, type=to_bool, metavar="on|off")
    elif ftype.startswith("int"):
        kwargs["type"] = int
    elif ftype.startswith("float"):
        kwargs["type"] = float
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    return names, kwargs


def add_dataclass_flags(group, cls, *, skip=(), taken: dict | None = None, notes: dict | None = None) -> None:
    """Add a flag per field of dataclass `cls` to `group` (fields in `skip` or already in `taken` are left)."""
    taken = {} if taken is None else taken
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in taken or not f.init:
            continue
        names, kwargs = flag_kwargs(f, (notes or {}).get(f.name))
        group.add_argument(*names, **kwargs)
        taken[f.name] = cls


def add_training_argument_flags(group, *, skip=(), defaults: dict | None = None, note=None) -> list[str]:
    """Every `TrainingArguments` field as a flag (HfArgumentParser's actions, defaults suppressed);
    returns the field names added. `defaults`: safekeel's own defaults, noted in the help as
    `note(name, default as text)` says (by default: that it follows the PACT paper or is pinned)."""
    from transformers import HfArgumentParser, TrainingArguments
    from transformers.hf_argparser import string_to_bool

    defaults = defaults or {}
    hf = HfArgumentParser(TrainingArguments, add_help=False)
    added = []
    for action in hf._actions:
        if not action.option_strings or action.dest in skip:
            continue
        action = copy.copy(action)
        action.default = SUPPRESS
        if action.type is string_to_bool:  # on/off too, and a bare flag means on, like safekeel's other switches
            action.type, action.nargs, action.const, action.metavar = to_bool, "?", True, "on|off"
        text = re.sub(r"\s+", " ", action.help or "").strip()
        if action.dest in defaults and not action.option_strings[0].startswith("--no"):
            shown = default_text(defaults[action.dest])
            text = f"{text} ({note(action.dest, shown) if note else _pinned(shown)})"
        action.help = text.replace("%", "%%")
        group._add_action(action)
        added.append(action.dest)
    return added


def _pinned(shown: str) -> str:
    return f"safekeel default: {shown}, following the PACT paper or pinned for the run record"
