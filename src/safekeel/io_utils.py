"""Atomic file writes (a crash never leaves a half-written artifact behind), and reading a YAML mapping
with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_yaml_mapping(path: str | Path, what: str, *, hint: str = "") -> dict:
    """The mapping a YAML file holds (an empty file: {}), or a one-line SafekeelError that names the file as
    the user gave it: `what` is "--config" or "grid file", `hint` says what the mapping holds ("of option
    names to values"). `safekeel train --config` and `safekeel experiment GRID.yaml` read their files so."""
    import yaml

    from safekeel.errors import SafekeelError

    try:
        data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SafekeelError(f"cannot read {what} {path}: file not found") from None
    except OSError as exc:
        raise SafekeelError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SafekeelError(f"{what} {path} is not valid YAML: it is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SafekeelError(f"{what} {path} is not valid YAML{where}: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SafekeelError(f"{what} {path} must be a mapping{' ' + hint if hint else ''}, got a "
                            f"{type(data).__name__}")
    return data
