"""One writer per output directory: `train` and `eval` take `DIR/.safekeel.lock` while they write.

The operating-system lock is `filelock.FileLock` (an `flock` on POSIX, `msvcrt.locking` on Windows),
held for the whole run and tried once, without waiting: a second writer fails at once. The kernel drops
it when the process dies, so a lock left behind by a killed run never blocks the directory.

What filelock does not do, and this module keeps: the lock file records who holds it (pid, host,
command, start time) as JSON, so the error a second writer sees names the first one, and a record left
by a run that died without releasing is reported as a *stale* lock taken over (`RunLock.took_over`, and
a warning). A cleanly released lock is an empty file. The record is read before the lock is tried:
filelock before 4.0 empties the file when it wins the lock, and would erase the dead holder's name;
from 3.30 on a contender that loses never touches it (so `filelock>=3.30` in pyproject.toml).

Under DDP (`torchrun` / `accelerate launch`) only the process with RANK 0 takes the lock; the other
ranks of the same launch write into the same directory by design.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

LOCK_NAME = ".safekeel.lock"


def _describe(info: dict) -> str:
    who = f"pid {info.get('pid', '?')}"
    if info.get("host") and info.get("host") != socket.gethostname():
        who += f" on {info['host']}"
    what = f" ({info['command']})" if info.get("command") else ""
    since = f" since {info['started']}" if info.get("started") else ""
    return who + what + since


def _read_info(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing, empty (released), or unreadable while locked (Windows)
        return {}


def _write(path: Path, text: str) -> None:
    """Replace the lock file's content through a second handle: closing it keeps the lock (an `flock`
    belongs to filelock's own descriptor). Windows refuses to write a locked byte range; the lock still
    holds there, only the holder's record is missing."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:  # pragma: no cover - Windows
        log.debug("could not record the lock holder in %s: %s", path, exc)


def is_secondary_rank() -> bool:
    """True in DDP processes other than global rank 0 (they share rank 0's output directory)."""
    try:
        return int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


class RunLock:
    """Context manager: `with RunLock(out_dir, "train"): ...`. SafekeelError when another live process
    holds `out_dir`; a stale lock (its process is gone) is taken over with a log message."""

    def __init__(self, directory: str | Path, command: str):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.command = command
        self._lock: FileLock | None = None
        self.took_over: dict | None = None  # the stale holder's record, when there was one

    def acquire(self) -> RunLock:
        if is_secondary_rank():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        before = _read_info(self.path)  # before trying: filelock < 4.0 empties the file when it wins
        # a fresh instance per RunLock (not a per-path singleton), so a second lock in this process is
        # refused like one in another process, instead of re-entering
        lock = FileLock(str(self.path), is_singleton=False)
        try:
            lock.acquire(timeout=0)  # one try: a busy directory fails now, it is not waited for
        except Timeout:
            info = _read_info(self.path) or before
            raise SafekeelError(f"{self.directory} is in use by another safekeel run ({_describe(info)}); "
                                "wait for it to finish or use another output directory") from None
        old = _read_info(self.path) or before
        if old.get("pid") and old.get("pid") != os.getpid():
            # we hold the OS lock, so the process that wrote this record no longer does: it died holding it
            self.took_over = old
            log.warning("%s: took over a stale lock left by %s, which is no longer running", self.directory,
                        _describe(old))
        _write(self.path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                      "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            _write(self.path, "")  # an empty file = nobody holds it; keeping the file avoids an unlink race
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
