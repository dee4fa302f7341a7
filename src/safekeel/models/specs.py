"""What a model argument names, checked without fetching or loading anything.

A model spec is a packaged name (`safekeel.models.packaged`), a local model directory (with a
config.json), a `.gguf` file, a model passed loaded to the Python API (`memory:…`,
`safekeel.models.in_memory`), or a hub id (ORG/NAME, checked when loaded). `spec_kind` is the one rule
both `model_spec` (the cheap command-line check) and `safekeel.models.loader.resolve_source` follow.
"""

from __future__ import annotations

from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.models import packaged


def spec_kind(spec: str, flag: str | None = None) -> str:
    """packaged | gguf | local | hub for a non-empty `spec`, or SafekeelError (naming `flag` when given)."""
    where, named = (f"{flag}: ", f"{flag} ") if flag else ("", "")
    from safekeel.models import in_memory

    if in_memory.is_memory_spec(spec):
        in_memory.lookup(spec)  # a one-line error when this process holds no such model
        return "memory"
    if packaged.is_packaged_model(spec):
        return "packaged"
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise SafekeelError(f"{where}GGUF file not found: {spec}")
        return "gguf"
    if path.exists():
        if not path.is_dir():
            raise SafekeelError(f"{named}{spec} is a file but not a .gguf model; give a model directory or a .gguf file")
        if not (path / "config.json").is_file():
            raise SafekeelError(f"{named}{spec} has no config.json; is it a model directory?")
        return "local"
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SafekeelError(f"{where}model path not found: {spec}")
    if "/" not in spec:
        known = ", ".join(packaged.PACKAGED_MODELS)
        raise SafekeelError(f"{where}unknown model {spec!r}: not a packaged name ({known}), a local path or a hub id")
    return "hub"


def model_spec(spec: str | None, flag: str = "--model") -> str:
    """A model argument that can be loaded: a packaged name, an existing local directory with a
    config.json, an existing .gguf file, or something shaped like a hub id (checked when loaded)."""
    if spec is None or not str(spec).strip():
        raise SafekeelError(f"{flag} is empty")
    spec = str(spec)
    spec_kind(spec, flag)
    return spec
