"""Cheap checks of command-line arguments, run before any download, model load or generation.

Each raises `SafekeelError` with one line naming the flag, so a typo costs a second, not the minutes of
compute (and the downloads) that come before the place where the value is first used. None of these
fetch anything. The checks of values that need a registry live beside it, in higher layers:
`safekeel.models.specs.model_spec` (a model argument) and `safekeel.data.prompts.prompt_spec` (a prompt set).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from safekeel.errors import SafekeelError


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` must be a writable directory."""
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SafekeelError(f"{flag} {path}: {probe} is a file, not a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise SafekeelError(f"{flag} {path}: cannot write in {probe} (permission denied)")


def output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """An output file: not a directory, in a directory that exists or can be made, writable."""
    if path is None or not str(path).strip():
        raise SafekeelError(f"{flag} is empty")
    p = Path(path).expanduser()
    if p.is_dir():
        raise SafekeelError(f"{flag} {path} is a directory; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise SafekeelError(f"{flag} {path}: the file is not writable (permission denied)")
    _writable_parent(p, flag)
    return p


def output_dir(path: str | os.PathLike, flag: str = "--output-dir") -> Path:
    """An output directory: a directory (or nothing yet) that can be written."""
    if path is None or not str(path).strip():
        raise SafekeelError(f"{flag} is empty")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise SafekeelError(f"{flag} {path} is a file, not a directory")
    if p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
        raise SafekeelError(f"{flag} {path}: cannot write in it (permission denied)")
    _writable_parent(p, flag)
    return p


def input_file(path: str | os.PathLike, flag: str) -> Path:
    """An existing, readable file."""
    if path is None or not str(path).strip():
        raise SafekeelError(f"{flag} is empty")
    p = Path(path).expanduser()
    if not p.exists():
        raise SafekeelError(f"{flag}: file not found: {path}")
    if p.is_dir():
        raise SafekeelError(f"{flag} {path} is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise SafekeelError(f"{flag} {path}: the file is not readable (permission denied)")
    return p


def finite(value: float, flag: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """A finite number (no nan/inf), optionally within [low, high] ((low, high] when `low_open`)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SafekeelError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise SafekeelError(f"{flag} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise SafekeelError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise SafekeelError(f"{flag} must be <= {high:g}, got {value:g}")
    return value


def adapter_dir(path: str | None, flag: str = "--adapter") -> str | None:
    """A PEFT adapter directory (holding adapter_config.json), or None."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise SafekeelError(f"{flag}: adapter not found: {path} (expected a PEFT directory with adapter_config.json)")
    return path
