"""Every registered defence passes the same contract (PEFT's shared test matrix): two steps with LoRA and
with full fine-tuning on a tiny model, its stats in the log, resume from a checkpoint, and a missing input
refused with one line before any model is loaded. Plus the registry's own rules and the hooks' timing."""

import json
import shutil

import pytest
import torch

from safekeel.cli.main import main
from safekeel.defences import DataPlan, Defence, LossTerms, register_defence, unregister_defence
from safekeel.defences.registry import DEFENCES, build_defence, defence_class, defence_names
from safekeel.errors import SafekeelError
from safekeel.testing import tiny_config, tiny_setup
from safekeel.training.run import prepare, train

# what each built-in must log besides ce (a new defence adds its line; the test fails until it does)
EXPECTED_STATS = {"sft": set(), "kl": {"kl"}, "pact": {"kl", "gate_first_n", "safety_mass_ft"},
                  "freeze": {"frozen_layers", "frozen_share"},
                  "safegrad": {"safegrad_cos", "safegrad_projected", "safegrad_safety_ce"},
                  "ewc": {"ewc_penalty", "step_term"},
                  "safelora": set(), "asft": {"step_term"},
                  "lisa": {"lisa_alignment", "step_term"}, "token_weighted": {"tw_weight", "tw_span"},
                  "constrained_sft": {"cs_weight", "cs_logratio"}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("contract"))


def _inputs(setup, name) -> dict:
    """The inputs a defence declares it needs, from the tiny set-up."""
    cls = defence_class(name)
    need = {**cls().needs(), **cls.optional_inputs}
    available = {"tokens": setup["tokens"], "safety_data": setup["safety"], "base": setup["base"]}
    return {k: available[k] for k in need} | ({} if "tokens" in need else {"tokens": None})


def test_every_built_in_has_a_contract_line():
    assert set(EXPECTED_STATS) == set(DEFENCES)


@pytest.mark.parametrize("name", list(DEFENCES))
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_steps_log_the_defence_stats(setup, tmp_path, name, mode):
    cls = defence_class(name)
    if mode not in cls.supports:
        pytest.skip(f"{name} does not support {mode}")
    cfg = tiny_config(setup, tmp_path, method=name, max_steps=2, full=mode == "full", **_inputs(setup, name))
    result = train(cfg, progress=False)
    assert result.global_step == 2
    logs = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert {"ce", *EXPECTED_STATS[name]} <= set(r), (name, sorted(r))
        assert all(torch.isfinite(torch.tensor(float(r[k]))) for k in ("loss", "ce", *EXPECTED_STATS[name]))
    saved = "model.safetensors" if mode == "full" else "adapter_model.safetensors"
    assert (tmp_path / saved).is_file()
    run = json.loads((tmp_path / "safekeel_run.json").read_text())
    assert run["status"] == "done" and run["options"]["method"] == name


@pytest.mark.parametrize("name", list(DEFENCES))
def test_resume_continues_with_the_same_losses(setup, tmp_path, name):
    common = {"method": name, "max_steps": 4, "save_steps": 2, "lora_dropout": 0.0, **_inputs(setup, name)}
    full = tmp_path / "full"
    train(tiny_config(setup, full, **common), progress=False)
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    result = train(tiny_config(setup, cut, resume=True, **common), progress=False)
    assert result.global_step == 4

    def losses(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())
                if "loss" in r}

    assert losses(cut)[4] == pytest.approx(losses(full)[4], rel=1e-4)


@pytest.mark.parametrize("name", [n for n in DEFENCES if defence_class(n)().needs()])
def test_a_missing_input_is_one_line_before_any_model_loads(setup, tmp_path, monkeypatch, capsys, name):
    from safekeel.models import loader

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the missing input was reported")

    monkeypatch.setattr(loader, "load_model", no_load)
    for missing in defence_class(name)().needs():
        inputs = {k: v for k, v in _inputs(setup, name).items() if k != missing and v}
        argv = ["train", "--method", name, "--model", setup["model"], "--dataset", setup["data"], "--output-dir",
                str(tmp_path / "out"), "--overlap-check", "none"]
        for key, value in inputs.items():
            argv += [f"--{key.replace('_', '-')}", value]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--{missing.replace('_', '-')}" in err and name in err, err
        assert not (tmp_path / "out").exists()


# -- the registry ------------------------------------------------------------------------------------
class _Twin(Defence):
    name = "sft"
    summary = "a second defence called sft"


def test_duplicate_names_are_refused_and_unknown_names_name_the_choices():
    with pytest.raises(SafekeelError, match="already registered"):
        register_defence("sft", _Twin)
    with pytest.raises(SafekeelError, match="has name 'sft'"):
        register_defence("other", _Twin)
    with pytest.raises(SafekeelError, match="unknown --method 'dpo'; choose sft, kl, pact"):
        defence_class("dpo")


def test_the_registry_is_lazy(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from safekeel.defences.registry import defence_class; defence_class('sft'); "
            "print('safekeel.defences.pact' in sys.modules, 'safekeel.losses' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]  # asking for sft imports neither PACT nor the loss math


def test_methods_command_and_docs_come_from_the_registry(capsys):
    from pathlib import Path

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in defence_names():
        assert name in out
    assert main(["methods", "--format", "markdown"]) == 0
    table = capsys.readouterr().out
    docs = (Path(__file__).parents[1] / "docs" / "defences.md").read_text()
    assert table in docs, "docs/defences.md's table is stale: run scripts/update_defence_table.py"
    reference = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    indented = "".join("  " + line + "\n" for line in table.splitlines())
    assert indented in reference, "docs/cli.md's table is stale: run scripts/update_defence_table.py"


def test_train_flags_come_from_the_options_dataclasses():
    from safekeel.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = set(sub._option_string_actions)
    import dataclasses

    from transformers import TrainingArguments

    for name in defence_names():
        for f in dataclasses.fields(defence_class(name).options_class):
            assert f"--{f.name.replace('_', '-')}" in flags and f"--{f.name}" in flags
    reserved = {"output_dir", "resume_from_checkpoint", "overwrite_output_dir", "remove_unused_columns",
                "label_names", "local_rank", "do_train", "do_eval", "do_predict"}
    for f in dataclasses.fields(TrainingArguments):
        if f.init and f.name not in reserved:
            assert f"--{f.name}" in flags, f.name
    help_text = " ".join(sub.format_help().split())
    assert "default 3e-5" not in help_text  # no default pasted by hand; the derived note says it
    assert "safekeel default: 3e-05" in help_text


# flags the README, the quickstart and experiments/ use must keep working (parsed, same values)
OLD_FLAGS = [
    ["--lambda", "10"], ["--lambda-kl", "10"], ["--preset", "reference-code"], ["--safety-mass", "on"],
    ["--temperature", "1"], ["--kl-scope", "safety"], ["--weights", "off"], ["--calibration", "on"],
    ["--decay", "off"], ["--gate-scale", "2"], ["--gate-bias", "0.1"], ["--k", "20"], ["--n", "4"], ["--tau", "2"],
    ["--threshold", "0.8"], ["--lora-r", "4"], ["--lora-rank", "4"], ["--lora-alpha", "8"], ["--lora-dropout", "0"],
    ["--lora-target-modules", "q_proj,v_proj"], ["--full"], ["--learning-rate", "2e-4"], ["--num-train-epochs", "1"],
    ["--per-device-train-batch-size", "4"], ["--gradient-accumulation-steps", "2"], ["--max-steps", "5"],
    ["--logging-steps", "5"], ["--save-steps", "1000"], ["--save-total-limit", "2"], ["--report-to", "none"],
    ["--seed", "3"], ["--max-length", "320"], ["--warmup-steps", "0.1"], ["--lr-scheduler-type", "constant"],
    ["--weight-decay", "0.01"], ["--max-grad-norm", "0.5"], ["--optim", "adamw_torch"],
    ["--dataloader-num-workers", "0"], ["--disable-tqdm"], ["--bf16", "off"], ["--fp16", "off"],
    ["--gradient-checkpointing"], ["--training-arg", "save_strategy=steps"], ["--poison-ratio", "0.5"],
    ["--num-examples", "160"], ["--with-replacement"], ["--system", "be nice"], ["--overlap-check", "none"],
    ["--reference-cache", "off"], ["--reference-cache-dir", "/tmp/rc"], ["--reference-batch-size", "4"],
    ["--dtype", "float32"], ["--model-name-or-path", "m2"], ["--dataset-name", "d2"], ["--harmful", "advbench"],
]


@pytest.mark.parametrize("extra", OLD_FLAGS, ids=lambda x: x[0])
def test_every_existing_flag_still_parses(extra):
    from safekeel.cli.main import build_parser
    from safekeel.cli.train_cmd import flat_options
    from safekeel.training.config import build_config

    argv = ["train", "--model", "m", "--dataset", "d", "--output-dir", "o", "--tokens", "t.json"]
    cfg = build_config(flat_options(build_parser().parse_args(argv + extra)))
    flat = {**cfg.to_dict(), **cfg.to_dict()["defence"], **cfg.to_dict()["lora"], **cfg.training}
    key = extra[0].lstrip("-").replace("-", "_")
    key = {"lambda": "lambda_kl", "lora_rank": "lora_r", "model_name_or_path": "model", "dataset_name": "dataset",
           "training_arg": "save_strategy"}.get(key, key)
    assert key in flat and flat[key] not in (None,), (key, flat.get(key))


# -- hooks: a data plan, the per-step term and the optimizer-step hook ------------------------------------
class Recorder(Defence):
    """Alternates the user's data with a refusal set, adds a per-step term and records every hook."""

    name = "recorder"
    summary = "test defence recording its hooks"

    def __init__(self, options=None):
        super().__init__(options)
        self.seen, self.norms, self.step_calls, self.after = [], [], [], None

    def data_plan(self, ctx):
        refusals = [{"id": f"s{i}", "harmful": True, "messages": [
            {"role": "user", "content": f"Do harm number {i}."},
            {"role": "assistant", "content": "Refused. I will not help with harm."}]} for i in range(6)]
        return DataPlan(sources={"safety": refusals}, schedule=lambda step: "safety" if step % 2 else "main")

    def loss(self, step):
        first = step.batch["answer_targets"][:, 0].tolist()
        self.seen.append((step.global_step, step.source, tuple(first)))
        weights = torch.ones_like(step.ce)
        return LossTerms(token_weights=weights, stats={"rows": (step.mask.sum(1).float(), step.mask.sum(1).float())})

    def step_loss(self, model, state):
        self.step_calls.append(state.global_step)
        params = [p for p in model.parameters() if p.requires_grad]
        return 1e-3 * sum((p.float() ** 2).sum() for p in params)

    def before_optimizer_step(self, model, optimizer, state):
        grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        self.norms.append((state.global_step, float(torch.stack(grads).norm())))

    def after_train(self, model, ctx):
        self.after = (type(model).__name__, len(ctx.rows))


def test_hooks_run_when_promised(setup, tmp_path):
    register_defence("recorder", Recorder)
    try:
        cfg = tiny_config(setup, tmp_path, method="recorder", tokens=None, max_steps=4, gradient_accumulation_steps=2,
                          per_device_train_batch_size=2, max_grad_norm=1e-4)
        prep = prepare(cfg, progress=False)
        rec = prep.trainer.defence
        tok = prep.trainer.processing_class
        refuse = tok("Refused", add_special_tokens=False)["input_ids"][0]
        prep.trainer.train()
        rec.after_train(prep.trainer.model, prep.context)
    finally:
        unregister_defence("recorder")
    # the plan: steps 1 and 3 (global_step 1, 3 before the step) drew only refusal rows, the others none
    by_step = {}
    for step, source, first in rec.seen:
        by_step.setdefault(step, set()).add(source)
        assert (set(first) == {refuse}) == (source == "safety"), (step, source, first)
    assert by_step == {0: {"main"}, 1: {"safety"}, 2: {"main"}, 3: {"safety"}}
    assert len(rec.seen) == 8  # 4 steps x 2 accumulated micro-batches
    assert rec.step_calls == [0, 1, 2, 3]  # once per optimizer step, not per micro-batch
    logs = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert all("step_term" in r and r["step_term"] > 0 and "rows" in r for r in logs)
    # once per step, on the accumulated gradients before clipping: the Trainer's pre-clip norm
    assert [s for s, _ in rec.norms] == [0, 1, 2, 3]
    assert [n for _, n in rec.norms] == pytest.approx([r["grad_norm"] for r in logs], rel=1e-4)
    assert min(n for _, n in rec.norms) > 1e-4  # so clipping (to 1e-4) happened after the hook
    assert rec.after[1] == 8


def test_built_in_options_reject_bad_values():
    with pytest.raises(SafekeelError, match="--lambda must be >= 0"):
        build_defence("kl", {"lambda_kl": -1})
    with pytest.raises(SafekeelError, match="--temperature must be > 0"):
        build_defence("pact", {"temperature": 0})


def test_another_defences_option_is_ignored_with_a_warning_whatever_its_type(caplog):
    """`--method ewc --safegrad-when always`: safegrad's (text) option is warned about and dropped, never
    read as a training argument."""
    import logging

    from safekeel.training.config import build_config

    with caplog.at_level(logging.WARNING):
        cfg = build_config({"method": "ewc", "model": "m", "dataset": "d", "output_dir": "o",
                            "safegrad_when": "always", "lisa_rho": 2})
    assert "ignored for --method ewc" in caplog.text and "safegrad_when" in caplog.text
    assert "safegrad_when" not in cfg.training and "lisa_rho" not in cfg.training


@pytest.mark.parametrize("name", [n for n in DEFENCES if not defence_class(n).sharded])
def test_a_defence_that_needs_whole_parameters_refuses_fsdp_before_loading(setup, tmp_path, monkeypatch, name):
    """`Defence.sharded = False`: under FSDP (as `accelerate launch` announces it) one line, no model loaded."""
    from safekeel.models import loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SafekeelError, match=f"--method {name} works with DDP, not FSDP"):
        tiny_config(setup, tmp_path, method=name, **_inputs(setup, name))
