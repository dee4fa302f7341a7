"""A 2-process CPU run (torchrun, gloo) gives the same losses as one process with the same global batch.

Each rank sees batch 1 of a 2-row dataset, one process sees batch 2; the loss is normalised by the answer
tokens of the whole global batch and DDP averages gradients, so step 1 (same weights) and step 2 (after
one update) must agree. PACT with the reference cache, so the cache pass runs under DDP too.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from safekeel.testing import tiny_setup

SCRIPT = textwrap.dedent("""
    import sys
    from safekeel.testing import tiny_config
    from safekeel.training.run import train
    setup = {"model": sys.argv[1], "data": sys.argv[2], "tokens": sys.argv[3]}
    train(tiny_config(setup, sys.argv[4], max_steps=2, per_device_train_batch_size=int(sys.argv[5]),
                      lora_dropout=0.0, learning_rate=1e-2, reference_cache="on", dataloader_num_workers=0),
          progress=False)
""")


def _losses(out_dir) -> dict:
    with open(os.path.join(out_dir, "train_log.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    return {r["step"]: (r["loss"], r["kl"]) for r in rows if "loss" in r}


def test_two_processes_match_one(tmp_path):
    setup = tiny_setup(tmp_path / "s", n_rows=2)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    args = [setup["model"], setup["data"], setup["tokens"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = tmp_path / "one"
    subprocess.run([sys.executable, str(script), *args, str(one), "2"], check=True, env=env, timeout=300,
                   capture_output=True)
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29561", str(script), *args, str(two), "1"],
                          env=env, timeout=300, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in (1, 2):
        assert b[step][0] == pytest.approx(a[step][0], rel=1e-4), (step, a, b)
        assert b[step][1] == pytest.approx(a[step][1], rel=1e-3, abs=1e-6)
    assert a[2][0] != pytest.approx(a[1][0], rel=1e-4)  # the update did something
    meta = json.loads(next((tmp_path / "two" / "refcache").glob("*/meta.json")).read_text())
    assert meta["examples"] == 2
    assert json.loads((two / "safekeel_run.json").read_text())["distributed"]["world_size"] == 2
    assert json.loads((one / "safekeel_run.json").read_text())["distributed"]["world_size"] == 1
