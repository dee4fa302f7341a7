"""`safekeel experiment`: the grid file (blocks, ids, unknown keys), checks before the first cell, resume
and skip (a cell.json alone is enough), refusal of cells run with other settings, --rerun-changed, merging
two machines' cells, progress lines, and one real end-to-end grid on a tiny model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from safekeel.cli.main import main
from safekeel.errors import SafekeelError
from safekeel.experiment import execute as X
from safekeel.experiment.cells import fmt_lr
from safekeel.experiment.grid import load_grid
from safekeel.experiment.runner import run_grid, subprocess_runner
from safekeel.experiment.tables import read_csv
from safekeel.judges.keyword import KeywordJudge
from safekeel.locking import RunLock

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "grid_example.yaml"


def grid_dict(tiny_dirs, prompts_file, out, **over) -> dict:
    data = {"model": tiny_dirs["aligned"], "output_dir": str(out), "datasets": ["arith"],
            "methods": ["sft", {"name": "kl", "id": "kl-l1", "label": "KL λ 1", "options": {"lambda": 1}}],
            "harmful_ratios": [0], "learning_rates": ["2e-4"], "seeds": [1, 2],
            "train": {"num_examples": 4, "max_steps": 2, "overlap_check": "none"},
            "eval": {"benchmarks": [str(prompts_file)], "limit": 2, "max_new_tokens": 2, "task_limit": 2}}
    data.update(over)
    return data


class FakeCells:
    """A stand-in for a cell's train + evals: numbers from the cell's settings, a marker in train/, and
    an optional failure for the cells named in `fail`."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, cell, cell_dir):
        self.calls.append(cell.id)
        if cell.id in self.fail:
            raise SafekeelError(f"simulated failure of {cell.id}")
        (cell_dir / "train").mkdir(parents=True, exist_ok=True)
        (cell_dir / "train" / "marker").write_text(cell.id)
        seed = cell.seed or 0
        asr = 0.5 if cell.initial else (0.2 if cell.defence == "kl" else 0.6) + 0.01 * seed
        return {"train_s": 0.0 if cell.initial else 1.5, "eval_s": 0.5, "warnings": [],
                "metrics": {"benchmark": "prompts", "asr": asr, "asr_ci_low": asr - 0.1, "asr_ci_high": asr + 0.1,
                            "over_refusal_everyday": 0.05, "over_refusal_risky": 0.2, "task": "arith",
                            "task_accuracy": 0.3 + 0.02 * seed, "task_cutoff_rate": 0.1}}


def run(grid, lines=None, **kwargs):
    return run_grid(grid, echo=(lines.append if lines is not None else lambda _: None), **kwargs)


# -- the grid file --------------------------------------------------------------------------------------

def test_the_committed_replication_cells_still_match_the_code(monkeypatch):
    """A default or option added to safekeel must not turn the committed replication's finished cells into
    'changed' ones (the grid resumes from them on any machine): each committed cell.json still holds its
    cell's fingerprint. Offline: settings and input files only, no model."""
    from safekeel.experiment.runner import CELL_FILE, cell_path, cell_state, check_cells

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the grid's paths are relative to the repository, as its command runs there
    grid = load_grid(repo / "benchmarks" / "replication" / "grid.yaml")
    committed = [c for c in grid.cells if (cell_path(grid, c) / CELL_FILE).is_file()
                 and json.loads((cell_path(grid, c) / CELL_FILE).read_text()).get("status") == "done"]
    assert len(committed) == len(grid.cells) == 30
    # SafeLoRA's and AsFT's cells name the de-aligned model that make_inputs.sh builds under the ignored
    # runs/: a finished cell is not checked for its inputs, so a fresh clone checks them too
    fps = check_cells(grid, committed)
    states = {c.id: cell_state(grid, c, fps[c.id]) for c in committed}
    assert {cid: s for cid, s in states.items() if s[0] != "done"} == {}


def test_example_grid_expands_to_the_replication():
    grid = load_grid(EXAMPLE)
    ids = [c.id for c in grid.cells]
    assert len(ids) == len(set(ids)) == 29 and ids[0] == "initial__arith"
    main_cells = [c for c in grid.cells if c.method in ("sft", "pact-l3") and c.learning_rate == 2e-4]
    assert {(c.harmful_ratio, c.seed) for c in main_cells} == {(r, s) for r in (0, 0.1, 0.5) for s in (1, 2, 3)}
    others = [c for c in grid.cells if c.method not in ("sft", "pact-l3", "initial")]
    assert len(others) == 8 and {(c.harmful_ratio, c.seed) for c in others} == {(0.5, 1)}
    assert {c.id for c in grid.cells if c.learning_rate == 5e-5} == {"sft__arith__r0.5__lr5e-5__s1",
                                                                   "pact-l3__arith__r0.5__lr5e-5__s1"}
    assert ids.index("token_weighted__arith__r0.5__lr2e-4__s1") < ids.index("sft__arith__r0__lr2e-4__s2")  # seed 1 first
    pact = next(c for c in grid.cells if c.id == "pact-l3__arith__r0.5__lr2e-4__s1")
    cfg = X.run_config(pact, Path("/tmp/unused"))
    assert cfg.method == "pact" and cfg.defence.lambda_kl == 3.0 and cfg.poison_ratio == 0.5
    assert cfg.training.learning_rate == 2e-4 and cfg.training.seed == 1 and cfg.num_examples == 160
    assert grid.labels()["pact-l3"] == "PACT λ 3" and pact.eval["limit"] == 100


def test_numbers_and_ids():
    assert [fmt_lr(x) for x in (2e-4, 3e-5, 2.5e-5, 0.0003, 1e-2, 1, 0.5)] == \
        ["2e-4", "3e-5", "2.5e-5", "3e-4", "1e-2", "1", "5e-1"]


@pytest.mark.parametrize("change, message", [
    ({"methodz": ["sft"]}, "unknown key 'methodz'"),
    ({"eval": {"limt": 3}}, "eval: unknown key 'limt'"),
    ({"blocks": [{"methods": ["sft"], "seed": [1]}]}, "blocks[0]: unknown key 'seed'"),
    ({"methods": [{"name": "sft", "optoins": {}}]}, "methods[0]: unknown key 'optoins'"),
    ({"methods": ["sftt"]}, "unknown method 'sftt'"),
    ({"methods": ["kl", {"name": "kl", "options": {"lambda": 3}}]}, "'kl' appears twice"),
    ({"train": {"learning_rate": 1e-3}}, "learning_rate is set per cell by the grid (use `learning_rates:`)"),
    ({"harmful_ratios": [0.5]}, "needs `harmful:`"),
    ({"harmful_ratios": [1.5]}, "not between 0 and 1"),
    ({"blocks": [{"methods": ["pact"]}]}, "'pact' is not a method id"),
    ({"eval": {"probes": "everyday"}}, "must include the over-refusal sets"),
    ({"learning_rates": None}, "no learning_rates"),
    ({"cells": ["nothing*"]}, "cells: 'nothing*' matches no cell"),
    ({"initial": "yes please"}, "initial must be true or false"),
    ({"blocks": [{"methods": ["sft"], "datasets": ["topic"]}]}, "'topic' is used but not declared"),
])
def test_bad_grid_files_name_the_key(tiny_dirs, prompts_file, tmp_path, change, message):
    with pytest.raises(SafekeelError) as info:
        load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", **change))
    assert message in str(info.value)


def test_every_cell_is_checked_before_the_first_runs(tiny_dirs, prompts_file, tmp_path):
    fake = FakeCells()
    bad = {"name": "kl", "id": "kl-bad", "options": {"lambda_kl": 1, "lora_r": 0}}
    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", methods=["sft", bad]))
    with pytest.raises(SafekeelError, match=r"cell kl-bad__arith__r0__lr2e-4__s1: --lora-r must be positive"):
        run(grid, runner=fake)
    pact = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", methods=["sft", "pact"]))
    with pytest.raises(SafekeelError, match="--method pact needs --tokens"):
        run(pact, runner=fake)
    missing = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", train={"tokens": str(tmp_path / "no.json")},
                                  methods=["sft", "pact"]))
    with pytest.raises(SafekeelError, match="no.json"):
        run(missing, runner=fake)
    assert fake.calls == [] and not (tmp_path / "g").exists()


# -- running, resuming, skipping --------------------------------------------------------------------------

def test_grid_resumes_and_skips_finished_cells(tiny_dirs, prompts_file, tmp_path):
    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g"))
    ids = [c.id for c in grid.cells]
    assert ids == ["initial__arith", "sft__arith__r0__lr2e-4__s1", "kl-l1__arith__r0__lr2e-4__s1",
                   "sft__arith__r0__lr2e-4__s2", "kl-l1__arith__r0__lr2e-4__s2"]
    fake, lines = FakeCells(fail={ids[2]}), []
    report = run(grid, lines, runner=fake)
    assert fake.calls == ids[:3] and report.failed == [(ids[2], f"simulated failure of {ids[2]}")]
    record = json.loads((tmp_path / "g" / "cells" / ids[2] / "cell.json").read_text())
    assert record["status"] == "failed" and "simulated" in record["error"]
    assert any(re.fullmatch(rf"\[2/5\] {re.escape(ids[1])} … done in \d+ s \(mean \d+ s/cell, ~ \d+ s left\)", x)
               for x in lines), lines
    # the second run skips the two finished cells and resumes at the failed one
    fake, lines = FakeCells(), []
    report = run(grid, lines, runner=fake)
    assert fake.calls == ids[2:] and report.skipped == ids[:2] and not report.failed
    assert f"[1/5] {ids[0]}: done earlier, skipped" in lines and any("(resuming)" in x for x in lines)
    assert len(read_csv(tmp_path / "g" / "results.csv")) == 5
    # nothing left: nothing runs, even with the big directories gone (a cell.json is enough)
    for cell_dir in (tmp_path / "g" / "cells").iterdir():
        shutil.rmtree(cell_dir / "train", ignore_errors=True)
    fake = FakeCells()
    assert run(grid, runner=fake).skipped == ids and fake.calls == []
    # another machine with only the committed cell.json files of the first three cells
    other = tmp_path / "other"
    for cid in ids[:3]:
        (other / "cells" / cid).mkdir(parents=True)
        shutil.copy(tmp_path / "g" / "cells" / cid / "cell.json", other / "cells" / cid / "cell.json")
    moved = load_grid(grid_dict(tiny_dirs, prompts_file, other))
    lines = []
    run(moved, lines, dry_run=True)
    assert lines[-1] == "5 cells: 3 done, 2 todo" and not (other / "results.csv").exists()
    fake = FakeCells()
    run(moved, runner=fake)
    assert fake.calls == ids[3:]
    written = yaml_load(other / "grid.yaml")
    assert load_grid(other).cells == moved.cells and written["output_dir"] == str(other)


def test_a_finished_cell_needs_none_of_its_inputs(tiny_dirs, prompts_file, tmp_path):
    # the committed replication's SafeLoRA and AsFT cells name a --base built under the ignored runs/: a
    # clone without it still lists them as done and resumes; a cell that still has to run is checked
    base = tmp_path / "dealigned"
    shutil.copytree(tiny_dirs["aligned"], base)
    settings = grid_dict(tiny_dirs, prompts_file, tmp_path / "g", seeds=[1], train={
        "num_examples": 4, "max_steps": 2, "overlap_check": "none", "base": str(base)})
    run(load_grid(settings), runner=FakeCells())
    shutil.rmtree(base)
    lines, fake = [], FakeCells()
    run(load_grid(settings), lines, dry_run=True)
    assert lines[-1] == "3 cells: 3 done"
    assert run(load_grid(settings), runner=fake).skipped and fake.calls == []
    with pytest.raises(SafekeelError, match=r"cell sft__arith__r0__lr2e-4__s2: --base: model path not found"):
        run(load_grid({**settings, "seeds": [1, 2]}), runner=fake)
    assert fake.calls == []


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_changed_settings_are_refused_never_mixed(tiny_dirs, prompts_file, tmp_path):
    base = grid_dict(tiny_dirs, prompts_file, tmp_path / "g")
    run(load_grid(base), runner=FakeCells())
    cells = tmp_path / "g" / "cells"
    # an evaluation setting changed: refused before anything runs, naming the cell and the change
    changed = {**base, "eval": {**base["eval"], "limit": 3}}
    fake = FakeCells()
    with pytest.raises(SafekeelError, match=r"cell initial__arith was run with different settings \(eval.limit: 2 -> 3\) "
                                            r"\(4 more cells alike\); use --rerun-changed or another output dir"):
        run(load_grid(changed), runner=fake)
    assert fake.calls == []
    lines = []
    run(load_grid(changed), lines, dry_run=True)
    assert lines[0].startswith("changed     initial__arith  (eval.limit: 2 -> 3)")
    # --rerun-changed reruns them and keeps the finished training runs (only the evaluation changed)
    first = json.loads((cells / "sft__arith__r0__lr2e-4__s1" / "cell.json").read_text())
    report = run(load_grid(changed), runner=fake, rerun_changed=True)
    assert len(report.ran) == 5 and (cells / "sft__arith__r0__lr2e-4__s1" / "train" / "marker").is_file()
    # the first run's times and numbers are kept beside the rerun's, with what changed
    again = json.loads((cells / "sft__arith__r0__lr2e-4__s1" / "cell.json").read_text())
    assert again["earlier"] == [{"change": "eval.limit: 2 -> 3", "fingerprint": first["fingerprint"],
                                 "started": first["started"], "finished": first["finished"], "wall": first["wall"],
                                 "metrics": first["metrics"], "safekeel_version": first["safekeel_version"]}]
    assert again["fingerprint"] != first["fingerprint"] and again["status"] == "done"
    # a training setting changed: the old training run is removed before the cell runs again
    (cells / "sft__arith__r0__lr2e-4__s1" / "train" / "old").write_text("x")
    retrain = {**changed, "train": {**base["train"], "num_examples": 6}}
    with pytest.raises(SafekeelError, match=r"train.num_examples: 4 -> 6"):
        run(load_grid(retrain), runner=FakeCells())
    run(load_grid(retrain), runner=FakeCells(), rerun_changed=True, only=["sft__*s1"])
    assert not (cells / "sft__arith__r0__lr2e-4__s1" / "train" / "old").exists()
    # retrained from scratch: nothing of the old runs is carried over as if it belonged to this one
    assert "earlier" not in json.loads((cells / "sft__arith__r0__lr2e-4__s1" / "cell.json").read_text())
    # tables never mix: cells of the old settings are left out (the initial model trains nothing: still valid)
    rows = read_csv(tmp_path / "g" / "results.csv")
    assert [r["cell"] for r in rows] == ["initial__arith", "sft__arith__r0__lr2e-4__s1"]
    # a label is cosmetic: renaming it changes no cell
    relabelled = {**retrain, "methods": ["sft", {"name": "kl", "id": "kl-l1", "label": "KL (λ=1)", "options": {"lambda": 1}}]}
    assert [c.settings_sha256() for c in load_grid(relabelled).cells] == [c.settings_sha256() for c in load_grid(retrain).cells]


def test_earlier_runs_survive_a_failed_rerun_and_its_resume(tiny_dirs, prompts_file, tmp_path):
    base = grid_dict(tiny_dirs, prompts_file, tmp_path / "g", seeds=[1])
    run(load_grid(base), runner=FakeCells())
    cell_json = tmp_path / "g" / "cells" / "sft__arith__r0__lr2e-4__s1" / "cell.json"
    first = json.loads(cell_json.read_text())
    changed = {**base, "eval": {**base["eval"], "limit": 3}}
    report = run(load_grid(changed), runner=FakeCells(fail=["sft__arith__r0__lr2e-4__s1"]), rerun_changed=True,
                 only=["sft__*"])
    failed = json.loads(cell_json.read_text())
    assert report.failed and failed["status"] == "failed"
    assert [e["started"] for e in failed["earlier"]] == [first["started"]]
    # resumed without --rerun-changed (same settings now): the first run's record is carried on, once
    run(load_grid(changed), runner=FakeCells(), only=["sft__*"])
    done = json.loads(cell_json.read_text())
    assert done["status"] == "done" and done["earlier"] == failed["earlier"]
    assert done["earlier"][0]["wall"] == first["wall"] and done["earlier"][0]["change"] == "eval.limit: 2 -> 3"


def test_a_cell_directory_without_cell_json_is_refused(tiny_dirs, prompts_file, tmp_path):
    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", seeds=[1]))
    (tmp_path / "g" / "cells" / "initial__arith" / "eval").mkdir(parents=True)
    (tmp_path / "g" / "cells" / "initial__arith" / "eval" / "results.json").write_text("{}")
    with pytest.raises(SafekeelError, match="cell initial__arith is not a grid cell .*holds files but no cell.json"):
        run(grid, runner=FakeCells())
    report = run(grid, runner=FakeCells(), rerun_changed=True)
    assert len(report.ran) == 3 and not (tmp_path / "g" / "cells" / "initial__arith" / "eval").exists()


def test_two_machines_merge_with_tables_only(tiny_dirs, prompts_file, tmp_path):
    for name, pattern in (("a", "initial*,sft*"), ("b", "kl*")):
        grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / name))
        run(grid, runner=FakeCells(), only=pattern.split(","))
    merged = tmp_path / "merged"
    for name in ("a", "b"):
        shutil.copytree(tmp_path / name / "cells", merged / "cells", dirs_exist_ok=True)
    grid = load_grid(grid_dict(tiny_dirs, prompts_file, merged))
    fake = FakeCells()
    run(grid, runner=fake, tables_only=True)
    assert fake.calls == []
    rows = read_csv(merged / "results.csv")
    assert [r["cell"] for r in rows] == [c.id for c in grid.cells]
    assert rows[2]["label"] == "KL λ 1" and rows[2]["asr"] == pytest.approx(0.21) and rows[0]["seed"] is None
    tables = (merged / "tables.md").read_text()
    assert "| KL λ 1 | 2e-4 | 2 | 21.5 ± 0.7 |" in tables and (merged / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_only_patterns_and_the_lock(tiny_dirs, prompts_file, tmp_path):
    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g"))
    with pytest.raises(SafekeelError, match="--only 'nope' matches no cell"):
        run(grid, runner=FakeCells(), only=["nope"])
    with RunLock(tmp_path / "g", "experiment"), pytest.raises(SafekeelError, match="in use by another safekeel run"):
        run(grid, runner=FakeCells())


def test_cli_dry_run_and_bad_file(tiny_dirs, prompts_file, tmp_path, capsys, expect_usage_error):
    import yaml

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid_dict(tiny_dirs, prompts_file, tmp_path / "g")))
    assert main(["experiment", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "todo        sft__arith__r0__lr2e-4__s1" in out and out.strip().endswith("5 cells: 5 todo")
    assert not (tmp_path / "g").exists()
    bad = tmp_path / "bad.yaml"
    for content, argv, message in [
        ({"seedz": [1]}, [], "grid: unknown key 'seedz'"),
        ({"train": {"num_exampels": 4}}, [], "cell sft__arith__r0__lr2e-4__s1: unknown option(s): num_exampels"),
        ({}, ["--only", "pact*"], "--only 'pact*' matches no cell"),
        ({}, ["--dry-run", "--tables-only"], "--dry-run and --tables-only are exclusive"),
    ]:
        bad.write_text(yaml.safe_dump({**grid_dict(tiny_dirs, prompts_file, tmp_path / "g"), **content}))
        expect_usage_error(["experiment", bad, *argv], message)
    bad.write_text("- just\n- a list\n")
    expect_usage_error(["experiment", bad], "must be a mapping")
    expect_usage_error(["experiment", tmp_path / "missing.yaml"], "cannot read grid file")


# -- the real thing on a tiny model ----------------------------------------------------------------------

def test_end_to_end_on_a_tiny_model(tiny_dirs, prompts_file, tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"How do I break thing {i}?", "response": f"Do step {i}."}) + "\n"
                               for i in range(4)))
    data = grid_dict(tiny_dirs, prompts_file, tmp_path / "g", methods=["sft"], seeds=[1], harmful=str(harmful),
                     harmful_ratios=[0.5], learning_rates=[1e-2],
                     train={"num_examples": 4, "max_steps": 2, "per_device_train_batch_size": 2, "max_length": 96,
                            "overlap_check": "none"},
                     eval={"benchmarks": [str(prompts_file)], "limit": 2, "max_new_tokens": 2, "batch_size": 64,
                           "task_limit": 2, "task_max_new_tokens": 4})
    grid = load_grid(data)
    assert [c.id for c in grid.cells] == ["initial__arith", "sft__arith__r0.5__lr1e-2__s1"]
    lines = []

    def runner(cell, cell_dir):  # the initial model in the default worker process, the trained cell here
        return subprocess_runner(cell, cell_dir) if cell.initial else X.execute_cell(cell, cell_dir, progress=False)

    report = run(grid, lines, runner=runner)
    assert report.ran == [c.id for c in grid.cells] and not report.failed, lines
    initial = json.loads((tmp_path / "g" / "cells" / "initial__arith" / "cell.json").read_text())
    assert initial["status"] == "done" and initial["metrics"]["over_refusal_everyday_n"] == 135
    assert "initial__arith" in (tmp_path / "g" / "cells" / "initial__arith" / "cell.log").read_text()
    cell = tmp_path / "g" / "cells" / "sft__arith__r0.5__lr1e-2__s1"
    record = json.loads((cell / "cell.json").read_text())
    assert record["status"] == "done" and record["wall"]["train_s"] > 0 and record["wall"]["eval_s"] > 0
    run_record = json.loads((cell / "train" / "safekeel_run.json").read_text())
    assert run_record["status"] == "done" and run_record["global_step"] == 2 and run_record["data"]["harmful_rows"] == 2
    m = record["metrics"]
    assert m["asr_n"] == 2 and m["over_refusal_everyday_n"] == 135 and m["over_refusal_risky_n"] == 52
    assert m["task_n"] == 2 and 0 <= m["task_accuracy"] <= 1 and m["task_cutoff_rate"] is not None
    results = json.loads((cell / "eval" / "results.json").read_text())
    assert results["model"]["adapter"] == str(cell / "train") and set(results["tasks"]) == {"arith"}
    rows = read_csv(tmp_path / "g" / "results.csv")
    assert [r["cell"] for r in rows] == [c.id for c in grid.cells] and rows[1]["asr"] == pytest.approx(m["asr"])
    assert "## arith, harmful ratio 0.5" in (tmp_path / "g" / "tables.md").read_text()
    # a cell whose training finished but whose evaluation did not resumes at the evaluation
    shutil.rmtree(cell / "eval")
    record["status"] = "running"
    (cell / "cell.json").write_text(json.dumps(record))
    stamp = (cell / "train" / "safekeel_run.json").stat().st_mtime_ns
    report = run(grid, runner=lambda c, d: X.execute_cell(c, d, progress=False))
    assert report.ran == [cell.name] and report.skipped == ["initial__arith"]
    assert (cell / "train" / "safekeel_run.json").stat().st_mtime_ns == stamp and (cell / "eval" / "results.json").is_file()
    assert json.loads((cell / "cell.json").read_text())["metrics"]["asr"] == m["asr"]


def test_eval_judges_in_the_grid_file(tiny_dirs, prompts_file, tmp_path, monkeypatch):
    from safekeel.judges import registry

    base = grid_dict(tiny_dirs, prompts_file, tmp_path / "g", seeds=[1])
    one = load_grid(base)
    assert one.config["eval"]["judge"] == "keyword" and "judges" not in one.config["eval"]
    # one judge, however written: the same cells as before lists existed (finished grids stay finished)
    for ev in ({"judge": "keyword"}, {"judge": ["keyword"]}, {"judges": ["keyword"]}, {"judges": "keyword"}):
        grid = load_grid({**base, "eval": {**base["eval"], **ev}})
        assert [c.settings_sha256() for c in grid.cells] == [c.settings_sha256() for c in one.cells]
    rubric = f"rubric:{tiny_dirs['aligned']}"
    for ev in ({"judges": ["keyword", rubric]}, {"judge": ["keyword", rubric]}, {"judge": f"keyword, {rubric}"}):
        grid = load_grid({**base, "eval": {**base["eval"], **ev}})
        assert grid.config["eval"]["judge"] == ["keyword", rubric] and "judges" not in grid.config["eval"]
        assert all(c.eval["judge"] == ["keyword", rubric] for c in grid.cells)
        assert [j.id for j in X.make_judges(grid.cells[0].eval)] == ["keyword", rubric]
    for ev, message in [({"judge": "keyword", "judges": ["keyword"]}, "give judge or judges, not both"),
                        ({"judges": []}, "eval.judges names no judge"), ({"judge": 3}, "must be a judge spec")]:
        with pytest.raises(SafekeelError, match=message):
            load_grid({**base, "eval": {**base["eval"], **ev}})
    # every judge is checked before the first cell runs
    for judges, message in [(["keyword", "rubric:nosuchmodel"], "cell initial__arith: .*unknown model 'nosuchmodel'"),
                            (["keyword", "keyword"], "cell initial__arith: judge: judge 'keyword' is given twice")]:
        with pytest.raises(SafekeelError, match=message):
            run(load_grid({**base, "eval": {**base["eval"], "judges": judges}}), runner=FakeCells())
    # a further judge named like a further benchmark would share its results.csv column
    def second():
        judge = KeywordJudge()
        judge.id = "second"
        return judge

    monkeypatch.setitem(registry._EXTRA, "second", second)
    second = tmp_path / "keyword.jsonl"
    shutil.copy(prompts_file, second)
    clash = {**base, "eval": {**base["eval"], "benchmarks": [str(prompts_file), str(second)], "judges": ["second", "keyword"]}}
    with pytest.raises(SafekeelError, match="two columns asr_keyword"):
        run(load_grid(clash), runner=FakeCells())
    assert not (tmp_path / "g").exists()


def test_a_judge_added_to_a_finished_grid_judges_only(tiny_dirs, prompts_file, tmp_path, monkeypatch):
    """eval.judges passes through to the cell's eval safety; adding a judge changes the cell (refused
    without --rerun-changed); the rerun loads no model and only the new judge judges."""
    from safekeel.generators import LazyGenerator
    from safekeel.judges import registry

    seen = []

    class Second(KeywordJudge):
        def __init__(self):
            super().__init__()
            self.id = "second"

        def judge(self, prompts, responses):
            seen.extend(prompts)
            return super().judge(prompts, responses)

    monkeypatch.setitem(registry._EXTRA, "second", Second)
    ev = {"benchmarks": [str(prompts_file)], "limit": 2, "max_new_tokens": 2, "batch_size": 64, "task_limit": 2,
          "task_max_new_tokens": 4}
    data = grid_dict(tiny_dirs, prompts_file, tmp_path / "g", methods=[], seeds=[1], eval=ev)

    def in_process(cell, cell_dir):  # the registered judge lives in this process only
        return X.execute_cell(cell, cell_dir, progress=False)

    assert run(load_grid(data), runner=in_process).ran == ["initial__arith"]
    assert "asr_second" not in read_csv(tmp_path / "g" / "results.csv")[0]
    more = {**data, "eval": {**ev, "judges": ["keyword", "second"]}}
    with pytest.raises(SafekeelError, match=r"eval.judge: 'keyword' -> \['keyword', 'second'\]"):
        run(load_grid(more), runner=in_process)

    def no_load(self):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(LazyGenerator, "_load", no_load)
    lines = []
    assert run(load_grid(more), lines, runner=in_process, rerun_changed=True).ran == ["initial__arith"], lines
    assert len(seen) == 2  # the two benchmark answers, by the new judge only
    cell = tmp_path / "g" / "cells" / "initial__arith"
    entry = json.loads((cell / "eval" / "results.json").read_text())["benchmarks"]["prompts"]
    (row,) = read_csv(tmp_path / "g" / "results.csv")
    assert row["asr_second"] == pytest.approx(entry["judges"]["second"]["asr"]) == pytest.approx(row["asr"])
    assert "kappa_second" in row and row["kappa_second"] == entry["judges"]["second"]["agreement"]["kappa"]
    assert json.loads((cell / "cell.json").read_text())["settings"]["eval"]["judge"] == ["keyword", "second"]
    assert "further judges, their ASR and kappa in results.csv: second" in (tmp_path / "g" / "tables.md").read_text()


def test_judge_errors_leave_the_cell_failed(tiny_dirs, prompts_file, tmp_path):
    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", seeds=[1], methods=["sft"]))

    class Errors(FakeCells):
        def __call__(self, cell, cell_dir):
            return {**super().__call__(cell, cell_dir), "warnings": ["prompts: 2 of 2 verdicts are judge errors"]}

    lines = []
    report = run(grid, lines, runner=Errors(), keep_going=True)
    assert [cid for cid, _ in report.failed] == [c.id for c in grid.cells] and not report.ran
    assert "FAILED (judge errors)" in lines[1] and not read_csv(tmp_path / "g" / "results.csv")
    fake = FakeCells()
    assert run(grid, runner=fake).ran == fake.calls == [c.id for c in grid.cells]  # a rerun tries again


def test_a_failing_worker_is_one_line(tiny_dirs, prompts_file, tmp_path, monkeypatch):
    """The subprocess runner reports the worker's last line (its error) and where the log is."""
    import subprocess

    from safekeel.experiment import runner as R

    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g", seeds=[1], methods=["sft"]))

    def worker(cmd, stdout, **kwargs):
        assert cmd[1:3] == ["-m", "safekeel.experiment.execute"] and cmd[3].endswith("initial__arith")
        stdout.write("Loading weights...\nerror: --benchmarks: file not found: gone.jsonl\n")
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(R.subprocess, "run", worker)
    report = run(grid)
    (cid, msg), = report.failed
    assert cid == "initial__arith" and msg.startswith("error: --benchmarks: file not found: gone.jsonl (exit status 2; log: ")
    assert json.loads((tmp_path / "g" / "cells" / cid / "cell.json").read_text())["status"] == "failed"


def test_new_packaged_data_makes_finished_cells_changed(tiny_dirs, prompts_file, tmp_path, monkeypatch):
    """A packaged name (strongreject-harmful) is not a file whose content is fingerprinted: when what it
    yields changes, DATA_VERSION changes, and cells recorded under the old content are not taken for new."""
    from safekeel.experiment import execute

    grid = load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g"))
    run(grid, runner=FakeCells())
    monkeypatch.setattr(execute, "DATA_VERSION", execute.DATA_VERSION + 1)
    with pytest.raises(SafekeelError, match="was run with different settings"):
        run(load_grid(grid_dict(tiny_dirs, prompts_file, tmp_path / "g")), runner=FakeCells())
