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
