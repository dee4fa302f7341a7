"""Runs never overwrite or mix: a non-empty --output-dir is refused, --overwrite really clears the old run,
--resume refuses other options and skips a half-written checkpoint, one writer per directory."""

import json
import logging
import socket
import subprocess
import sys

import pytest

from safekeel.cli.main import main
from safekeel.errors import SafekeelError
from safekeel.locking import LOCK_NAME, RunLock
from safekeel.testing import tiny_config, tiny_setup
from safekeel.training.checkpoints import OPTIONS_FILE, differences
from safekeel.training.run import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("guard"))


def _steps(out) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def _checkpoints(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if "checkpoint-" in p.name)


def test_a_finished_run_is_not_overwritten(setup, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(setup, out, max_steps=2), progress=False)
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(SafekeelError, match="already holds a training run .*--overwrite"):
        train(tiny_config(setup, out, max_steps=2, learning_rate=1e-2), progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == before and _steps(out) == [1, 2]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SafekeelError, match=r"is not empty \(notes.txt\)"):
        train(tiny_config(setup, other, max_steps=1), progress=False)


def test_overwrite_clears_the_old_run(setup, tmp_path, caplog):
    out = tmp_path / "run"
    train(tiny_config(setup, out, max_steps=3, save_steps=1), progress=False)
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    (out / "notes.txt").write_text("kept")
    with caplog.at_level(logging.WARNING):
        result = train(tiny_config(setup, out, max_steps=2, save_steps=1, overwrite=True), progress=False)
    assert result.global_step == 2
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]  # no checkpoint-3 left to resume from
    assert _steps(out) == [1, 2]  # the old log is gone, not cut
    assert (out / "notes.txt").read_text() == "kept"
    assert "removed the previous run" in caplog.text and "kept files" in caplog.text
    run = json.loads((out / "safekeel_run.json").read_text())
    assert run["global_step"] == 2 and run["options"]["overwrite"] is True
    assert json.loads((out / "checkpoint-2" / OPTIONS_FILE).read_text())["training"]["max_steps"] == 2


def test_resume_with_other_options_is_refused(setup, tmp_path):
    out = tmp_path / "run"
    common = {"max_steps": 4, "save_steps": 2}
    train(tiny_config(setup, out, **common), progress=False)
    with pytest.raises(SafekeelError) as exc:
        train(tiny_config(setup, out, resume=True, learning_rate=1e-2, lambda_kl=1.0, **common), progress=False)
    message = str(exc.value)
    assert "checkpoint-4 was trained with other options" in message
    assert "learning_rate 0.005 -> 0.01" in message and "lambda_kl 3.0 -> 1.0" in message
    # what does not change the training may differ: progress, logging, the cache's place
    result = train(tiny_config(setup, out, resume=True, logging_steps=5, disable_tqdm=False,
                               reference_cache_dir=str(tmp_path / "elsewhere"), **common), progress=False)
    assert result.global_step == 4


def test_differences_ignore_bookkeeping():
    old = tiny_config({"model": "m", "data": "d", "tokens": "t"}, "a").to_dict()
    new = tiny_config({"model": "m", "data": "d", "tokens": "t"}, "b", resume=True, save_steps=7,
                      save_strategy="steps", seed=3, dataloader_num_workers=2, optim="sgd").to_dict()
    assert differences(old, new) == ["optim 'adamw_torch' -> 'sgd'", "seed 42 -> 3"]


def _damage(checkpoint, how):
    if how == "no-state":
        (checkpoint / "trainer_state.json").unlink()
    elif how == "cut-state":
        text = (checkpoint / "trainer_state.json").read_text()
        (checkpoint / "trainer_state.json").write_text(text[: len(text) // 2])
    elif how == "cut-weights":
        weights = checkpoint / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif how == "no-weights":
        (checkpoint / "adapter_model.safetensors").unlink()


@pytest.mark.parametrize("how", ["no-state", "cut-state", "cut-weights", "no-weights"])
def test_resume_skips_a_partial_checkpoint(setup, tmp_path, caplog, how):
    out = tmp_path / "run"
    common = {"max_steps": 4, "save_steps": 2, "lora_dropout": 0.0}
    train(tiny_config(setup, out, **common), progress=False)
    _damage(out / "checkpoint-4", how)
    with caplog.at_level(logging.WARNING):
        result = train(tiny_config(setup, out, resume=True, **common), progress=False)
    assert "skipped checkpoint-4" in caplog.text and "resuming from checkpoint-2" in caplog.text
    assert result.global_step == 4 and _steps(out) == [1, 2, 3, 4]
    assert json.loads((out / "safekeel_run.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert _checkpoints(out) == ["checkpoint-2", "checkpoint-4", "incomplete-checkpoint-4"]
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()  # written anew, not on top of the old one


def test_resume_without_a_complete_checkpoint(setup, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(setup, out, max_steps=2, save_steps=2), progress=False)
    _damage(out / "checkpoint-2", "no-state")
    with pytest.raises(SafekeelError, match="no complete checkpoint .*checkpoint-2: no trainer_state.json"):
        train(tiny_config(setup, out, resume=True, max_steps=2, save_steps=2), progress=False)


def _cli(setup, out):
    return ["train", "--method", "sft", "--model", setup["model"], "--dataset", setup["data"], "--output-dir",
            str(out), "--max-steps", "1", "--disable-tqdm", "--overlap-check", "none"]


def test_a_second_writer_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out, "train"):
        assert main(_cli(setup, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is in use by another safekeel run" in err, err
        assert not (out / "safekeel_run.json").exists()
    assert main(_cli(setup, out)) == 0  # once the first writer is done, the directory is free


def test_a_stale_lock_is_taken_over(setup, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                             "command": "train", "started": "2020-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING):
        assert main(_cli(setup, out)) == 0
    assert "took over a stale lock" in caplog.text
    assert (out / LOCK_NAME).read_text() == ""  # released at the end
