"""Cheap checks of command-line arguments, run before any download, model load or generation.

Each raises `SafekeelError` with one line naming the flag, so a typo costs a second, not the minutes of
compute (and the downloads) that come before the place where the value is first used. None of these
fetch anything: a packaged model or benchmark name is checked against the registry, not downloaded.
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


def model_spec(spec: str | None, flag: str = "--model") -> str:
    """A model argument that can be loaded: a packaged name, an existing local directory with a
    config.json, an existing .gguf file, or something shaped like a hub id (checked when loaded)."""
    from safekeel.models import packaged

    if spec is None or not str(spec).strip():
        raise SafekeelError(f"{flag} is empty")
    spec = str(spec)
    if packaged.is_packaged_model(spec):
        return spec
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise SafekeelError(f"{flag}: GGUF file not found: {spec}")
        return spec
    if path.exists():
        if not path.is_dir():
            raise SafekeelError(f"{flag} {spec} is a file but not a .gguf model; give a model directory or a .gguf file")
        if not (path / "config.json").is_file():
            raise SafekeelError(f"{flag} {spec} has no config.json; is it a model directory?")
        return spec
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SafekeelError(f"{flag}: model path not found: {spec}")
    if "/" not in spec:
        known = ", ".join(packaged.PACKAGED_MODELS)
        raise SafekeelError(f"{flag}: unknown model {spec!r}: not a packaged name ({known}), a local path or a hub id")
    return spec


def adapter_dir(path: str | None, flag: str = "--adapter") -> str | None:
    """A PEFT adapter directory (holding adapter_config.json), or None."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise SafekeelError(f"{flag}: adapter not found: {path} (expected a PEFT directory with adapter_config.json)")
    return path


def prompt_spec(spec: str | None, flag: str = "--prompts") -> str:
    """A prompt-set argument (see `safekeel.data.prompts`) checked without fetching anything."""
    from safekeel.data.prompts import _FILE_SUFFIXES, PACKAGED_SETS

    if spec is None or not str(spec).strip():
        raise SafekeelError(f"{flag} is empty")
    spec = str(spec).strip()
    base, _, option = spec.partition(":")
    if base in ("harmbench", "harmbench-val"):
        if option and option not in ("standard", "contextual", "copyright", "all"):
            raise SafekeelError(f"{flag}: unknown HarmBench subset {option!r}; use standard, contextual, copyright or all")
        return spec
    if base in PACKAGED_SETS and not option:
        return spec
    if spec.lower().endswith(_FILE_SUFFIXES) or Path(spec).exists() or spec.startswith((".", "/", "~")):
        input_file(spec, flag)
        return spec
    if spec.startswith("hf:") or "/" in spec:
        return spec
    raise SafekeelError(f"{flag}: unknown prompt set {spec!r}: use one of {', '.join(PACKAGED_SETS)}, "
                        "a .jsonl/.csv/.parquet file or a hub dataset id")
