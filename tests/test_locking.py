"""The output-directory lock: one writer at a time, a dead writer's lock taken over, DDP ranks exempt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from safekeel.errors import SafekeelError
from safekeel.locking import LOCK_NAME, RunLock

HOLD = ("import sys, time\nfrom safekeel.locking import RunLock\n"
        "lock = RunLock(sys.argv[1], 'train').acquire()\nprint('held', flush=True)\ntime.sleep(120)")


def _holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_blocks_and_a_killed_one_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(SafekeelError, match=rf"in use by another safekeel run \(pid {proc.pid} \(train\)"):
            RunLock(tmp_path, "eval safety").acquire()
    finally:
        proc.kill()  # SIGKILL: no clean-up runs, the lock file still names the dead process
        proc.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid
    with caplog.at_level("WARNING"), RunLock(tmp_path, "eval safety") as lock:
        assert lock.took_over["pid"] == proc.pid
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "eval safety"
    assert f"stale lock left by pid {proc.pid}" in caplog.text


def test_release_leaves_an_empty_lock_and_a_second_lock_in_one_process_is_refused(tmp_path):
    with RunLock(tmp_path, "train") as first:
        with pytest.raises(SafekeelError, match="in use"):
            RunLock(tmp_path, "train").acquire()
        assert first.took_over is None
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with RunLock(tmp_path, "train") as again:  # a cleanly released lock is not "stale"
        assert again.took_over is None


def test_other_ddp_ranks_do_not_lock(tmp_path, monkeypatch):
    with RunLock(tmp_path, "train"):
        monkeypatch.setenv("RANK", "1")
        with RunLock(tmp_path / "x", "train"):  # rank 1 shares rank 0's directory
            assert not (tmp_path / "x" / LOCK_NAME).exists()


def test_a_refused_writer_is_refused_at_once_and_leaves_the_holders_record(tmp_path):
    import time

    proc = _holder(tmp_path)
    try:
        for _ in range(2):  # a refused try must not erase the record the next one reads
            t0 = time.monotonic()
            with pytest.raises(SafekeelError, match=rf"pid {proc.pid} \(train\)"):
                RunLock(tmp_path, "eval task").acquire()
            assert time.monotonic() - t0 < 5  # tried once, never waited for
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_a_filelock(tmp_path):
    """The OS lock is filelock's, so any filelock user of the same file excludes a run and vice versa."""
    from filelock import FileLock, Timeout

    with FileLock(str(tmp_path / LOCK_NAME)).acquire(timeout=0), \
            pytest.raises(SafekeelError, match="in use by another safekeel run"):
        RunLock(tmp_path, "train").acquire()
    with RunLock(tmp_path, "train"), pytest.raises(Timeout):
        FileLock(str(tmp_path / LOCK_NAME)).acquire(timeout=0)


def test_a_record_the_lock_winner_empties_is_still_reported_stale(tmp_path, monkeypatch, caplog):
    """Some filelock versions empty the file when they win the lock: the record is read before trying."""
    import filelock

    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "command": "train"}))
    real = filelock.FileLock.acquire

    def acquire_and_truncate(self, *a, **k):
        out = real(self, *a, **k)
        (tmp_path / LOCK_NAME).write_text("")
        return out

    monkeypatch.setattr(filelock.FileLock, "acquire", acquire_and_truncate)
    with caplog.at_level("WARNING"), RunLock(tmp_path, "eval safety") as lock:
        assert lock.took_over["pid"] == 999_999_999
    assert "stale lock left by pid 999999999 (train)" in caplog.text
