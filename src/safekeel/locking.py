"""One writer per output directory: `train` and `eval` take `DIR/.safekeel.lock` while they write.

The lock is an `fcntl.flock` on the lock file, held for the whole run: the kernel drops it when the
process dies, so a lock left behind by a killed run is *stale* and is taken over (with a message)
instead of blocking the directory forever. The file records who holds it (pid, host, command, start
time) so the error a second writer sees names the first one. Where `fcntl` is missing (Windows) the
pid in the file decides: a live pid on this host holds the lock.

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

from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

LOCK_NAME = ".safekeel.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


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
    except (OSError, ValueError):
        return {}


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
        self._fh = None
        self.took_over: dict | None = None  # the stale holder's record, when there was one

    def acquire(self) -> RunLock:
        if is_secondary_rank():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: decide by pid
            fcntl = None
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                info = _read_info(self.path)
                fh.close()
                raise SafekeelError(f"{self.directory} is in use by another safekeel run ({_describe(info)}); "
                                    "wait for it to finish or use another output directory") from None
        old = _read_info(self.path)
        if old.get("pid") and old.get("pid") != os.getpid():
            same_host = old.get("host") == socket.gethostname()
            if fcntl is None and same_host and _pid_alive(int(old["pid"])):
                fh.close()
                raise SafekeelError(f"{self.directory} is in use by another safekeel run ({_describe(old)})")
            self.took_over = old
            log.warning("%s: took over a stale lock left by %s, which is no longer running", self.directory,
                        _describe(old))
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self._fh.seek(0)
            self._fh.truncate()  # an empty file = nobody holds it; keeping the file avoids an unlink race
            self._fh.flush()
        finally:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
