"""Each method's loss, logged statistics and gradients equal the values recorded from the code before the
defence registry (tests/golden/losses.json, written by tests/golden/record_losses.py at commit f7008ee)."""

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "golden"
RECORDED = json.loads((HERE / "losses.json").read_text())
_spec = importlib.util.spec_from_file_location("record_losses", HERE / "record_losses.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safekeel.testing import tiny_setup

    return tiny_setup(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("case", sorted(record.CASES))
def test_loss_stats_and_gradients_match_the_recorded_values(setup, tmp_path, case):
    now = record.measure(setup, tmp_path, case, record.CASES[case])
    then = RECORDED[case]
    assert now["loss"] == pytest.approx(then["loss"], rel=1e-5, abs=1e-7)
    assert sorted(now["stats"]) == sorted(then["stats"])
    for name, groups in then["stats"].items():
        flat_now = [x for group in now["stats"][name] for x in group]
        assert flat_now == pytest.approx([x for group in groups for x in group], rel=1e-5, abs=1e-7), name
    assert sorted(now["grad_norms"]) == sorted(then["grad_norms"])
    for name, norm in then["grad_norms"].items():
        assert now["grad_norms"][name] == pytest.approx(norm, rel=1e-4, abs=1e-8), name
