"""`lisa` (Huang et al. 2024): the switching rule and the proximal anchors against a literal copy of the
authors' `LisaTrainer` loop (git-disl/Lisa trainer.py: check_mode / switch_model / the proximal term in
training_step), the term and its gradient against a loop, the anchor refreshed exactly at each switch,
the edge cases (ρ = 0, no alignment steps), two steps through the CLI and resume across switches."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from safekeel.cli.main import main
from safekeel.defences.lisa import (
    ANCHOR_FILE,
    Lisa,
    LisaOptions,
    is_alignment_step,
    last_switch,
    proximal_term,
)
from safekeel.errors import SafekeelError
from safekeel.testing import tiny_setup


def lisa(**given) -> Lisa:
    return Lisa(LisaOptions.build(given))


# -- the authors' loop, literally (status + clock; switch_model after the status flip) ------------------
def authors_run(n_steps, align, finetune, *, rho=0.0, warmup=None, params=None, losses=None, lr=0.1):
    """The authors' training_step for n_steps, one micro-batch per step. Returns (statuses, switch steps,
    parameter trajectory). `losses`: {"alignment": f, "finetune": f} of the parameter list; `warmup`: the
    0.1 of `self.steps > 0.1 * len(dataloader) * epochs` (None: no such condition, the paper preset)."""
    status = "alignment" if align != 0 else "finetune"
    alignment_weights = [p.detach().clone() for p in params or []]
    finetune_weights = [p.detach().clone() for p in params or []]
    clock = steps = 0
    statuses, switches, trajectory = [], [], []

    def switch_model():  # runs after the status flip: refreshes the anchor of the state being entered
        if status == "alignment":
            finetune_weights[:] = [p.detach().clone() for p in params or []]
        else:
            alignment_weights[:] = [p.detach().clone() for p in params or []]

    for _ in range(n_steps):
        if status == "alignment":
            if clock % align == 0 and steps != 0 and finetune != 0:
                status = "finetune"
                switch_model()
                switches.append(steps)
                clock = 0
        else:
            if clock % finetune == 0 and steps != 0 and align != 0:
                status = "alignment"
                switch_model()
                switches.append(steps)
                clock = 0
        statuses.append(status)
        if params is not None:
            loss = losses[status](params)
            if warmup is None or steps > warmup * n_steps:
                anchors = finetune_weights if status == "alignment" else alignment_weights
                for p, a in zip(params, anchors):
                    if rho > 0:
                        loss = loss + rho / 2 * torch.norm(p - a) ** 2
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
            trajectory.append([p.detach().clone() for p in params])
        steps += 1  # noqa: SIM113 (their counters, kept literally)
        clock += 1
    return statuses, switches, trajectory


@pytest.mark.parametrize("align,finetune", [(1, 1), (1, 3), (3, 1), (2, 5), (100, 900), (0, 4), (4, 1)])
def test_the_schedule_is_the_authors_switching_rule(align, finetune):
    n = 2 * (align + finetune) + 7
    statuses, switches, _ = authors_run(n, align, finetune)
    assert [is_alignment_step(s, align, finetune) for s in range(n)] == [st == "alignment" for st in statuses]
    assert [last_switch(s, align, finetune) for s in range(n)] == [max([0] + [w for w in switches if w <= s])
                                                                   for s in range(n)]


def toy_problem():
    """Two trainable tensors (float64) and two different quadratic-plus-quartic losses, one per state."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    targets = {k: [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
               for k in ("alignment", "finetune")}

    def make(kind):
        return lambda ps: sum(((p - t) ** 2).sum() + 0.1 * ((p - t) ** 4).sum() for p, t in zip(ps, targets[kind]))

    return params, {"alignment": make("alignment"), "finetune": make("finetune")}


class Toy(torch.nn.Module):
    def __init__(self, tensors):
        super().__init__()
        self.a = torch.nn.Parameter(tensors[0].clone())
        self.b = torch.nn.Parameter(tensors[1].clone())


def our_run(defence: Lisa, n_steps, start, losses, lr=0.1, record=None):
    """The same training through the defence's hooks: the data plan's schedule picks the state's loss,
    step_loss adds the proximal term once per step."""
    model = defence.configure_model(Toy(start))
    align, finetune = defence.options.lisa_alignment_steps, defence.options.lisa_finetune_steps
    trajectory = []
    for step in range(n_steps):
        kind = "alignment" if is_alignment_step(step, align, finetune) else "finetune"
        params = [model.a, model.b]
        loss = losses[kind](params)
        term = defence.step_loss(model, SimpleNamespace(global_step=step, max_steps=n_steps))
        if term is not None:
            loss = loss + term
        if record is not None:
            record.append((step, defence.anchor_step, [a.clone() for a in defence.anchor or []],
                           [p.detach().clone() for p in params]))
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


@pytest.mark.parametrize("given,warmup", [
    ({"lisa_alignment_steps": 2, "lisa_finetune_steps": 3, "lisa_rho": 0.7}, None),
    ({"lisa_alignment_steps": 1, "lisa_finetune_steps": 1, "lisa_rho": 2.0}, None),
    ({"lisa_alignment_steps": 3, "lisa_finetune_steps": 2, "lisa_rho": 0.5, "preset": "reference-code"}, 0.1),
    ({"lisa_alignment_steps": 2, "lisa_finetune_steps": 3, "lisa_rho": 0.0}, None),  # plain alternation (BSO)
    ({"lisa_alignment_steps": 0, "lisa_finetune_steps": 3, "lisa_rho": 1.0}, None),  # SFT + pull to the start
])
def test_training_matches_the_authors_loop(given, warmup):
    start, losses = toy_problem()
    n = 23
    _, _, theirs = authors_run(n, given["lisa_alignment_steps"], given["lisa_finetune_steps"], rho=given["lisa_rho"],
                               warmup=warmup, params=[p.clone().requires_grad_(True) for p in start], losses=losses)
    ours = our_run(lisa(**given), n, start, losses)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12, msg=f"step {step}")
    # and the term mattered: without it the run goes elsewhere; except with ρ = 0, and with one-step states,
    # where every step is a switch, so θ̃ = θ and the term and its gradient are 0
    plain = our_run(lisa(**{**given, "lisa_rho": 0.0}), n, start, losses)
    inert = given["lisa_rho"] == 0 or given["lisa_alignment_steps"] == given["lisa_finetune_steps"] == 1
    assert torch.allclose(plain[-1][0], ours[-1][0], rtol=0, atol=1e-12) == inert


def test_the_anchor_is_refreshed_exactly_at_each_switch():
    start, losses = toy_problem()
    record = []
    our_run(lisa(lisa_alignment_steps=2, lisa_finetune_steps=3, lisa_rho=0.3), 17, start, losses, record=record)
    switches = {0, 2, 5, 7, 10, 12, 15}
    weights_at = {step: params for step, _, _, params in record}  # the weights at the start of each step
    for step, anchor_step, anchor, _ in record:
        assert anchor_step == last_switch(step, 2, 3) == max(s for s in switches if s <= step)
        for a, w in zip(anchor, weights_at[anchor_step]):
            assert torch.equal(a, w), step
    # a new anchor exactly at the switches, the same object in between
    changed = [step for (step, _, a, _), (_, _, b, _) in zip(record[1:], record) if not torch.equal(a[0], b[0])]
    assert changed == sorted(switches - {0})


def test_proximal_term_and_its_gradient_against_a_loop():
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)]
    anchors = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    rho = 0.37
    term = proximal_term(params, anchors, rho)
    literal = 0.0
    for p, a in zip(params, anchors):
        for x, y in zip(p.detach().flatten().tolist(), a.flatten().tolist()):
            literal += rho / 2 * (x - y) ** 2
    assert float(term.detach()) == pytest.approx(literal, rel=1e-12)
    (term * 3.0).backward()  # the incoming gradient scales it
    for p, a in zip(params, anchors):
        torch.testing.assert_close(p.grad, 3.0 * rho * (p.detach() - a), rtol=1e-12, atol=0)
    # bf16 weights: the difference is taken in float32 and the gradient has the weight's dtype
    p16 = torch.tensor([1.0, 2.0], dtype=torch.bfloat16, requires_grad=True)
    a16 = torch.tensor([0.5, 2.5], dtype=torch.bfloat16)
    proximal_term([p16], [a16], 2.0).backward()
    assert p16.grad.dtype == torch.bfloat16 and p16.grad.tolist() == [1.0, -1.0]


def test_rho_zero_keeps_no_anchor_and_adds_nothing():
    d = lisa(lisa_rho=0.0, lisa_alignment_steps=1, lisa_finetune_steps=1)
    model = d.configure_model(Toy(toy_problem()[0]))
    assert d.anchor is None
    assert d.step_loss(model, SimpleNamespace(global_step=1, max_steps=4)) is None


def test_no_alignment_steps_has_no_data_plan_and_loads_no_safety_data():
    d = lisa(lisa_alignment_steps=0)
    ctx = SimpleNamespace(config=SimpleNamespace(safety_data="/does/not/exist.jsonl"), cache={})
    assert d.data_plan(ctx) is None  # the trainer's own sampler: a plain SFT schedule
    assert not any(is_alignment_step(s, 0, 900) for s in range(2000))


def test_options_are_checked_and_the_presets_differ_only_in_the_warmup():
    assert LisaOptions.build({}).lisa_proximal_warmup == 0.0
    ref = LisaOptions.build({"preset": "reference-code"})
    assert (ref.lisa_proximal_warmup, ref.lisa_rho, ref.lisa_alignment_steps, ref.lisa_finetune_steps) == (0.1, 1.0,
                                                                                                          100, 900)
    for given, flag in [({"lisa_rho": -1}, "--lisa-rho"), ({"lisa_finetune_steps": 0}, "--lisa-finetune-steps"),
                        ({"lisa_alignment_steps": -1}, "--lisa-alignment-steps"),
                        ({"lisa_proximal_warmup": 1.0}, "--lisa-proximal-warmup")]:
        with pytest.raises(SafekeelError, match=flag):
            LisaOptions.build(given)


# -- through the CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("lisa"))


def argv(setup, out, *extra):
    return ["train", "--method", "lisa", "--model", setup["model"], "--dataset", setup["data"], "--safety-data",
            setup["safety"], "--output-dir", str(out), "--overlap-check", "none", "--disable-tqdm",
            "--logging-steps", "1", "--learning-rate", "5e-3", "--per-device-train-batch-size", "2",
            "--lora-dropout", "0", "--report-to", "none", *extra]


def logged(out) -> dict:
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def test_two_steps_through_the_cli(setup, tmp_path):
    out = tmp_path / "run"
    assert main(argv(setup, out, "--max-steps", "2", "--lisa-alignment-steps", "1", "--lisa-finetune-steps", "1")) == 0
    logs = logged(out)
    assert logs[1]["lisa_alignment"] == 1.0 and logs[2]["lisa_alignment"] == 0.0  # safety step, then user step
    # both steps start a state (the second is a switch), so θ̃ = θ there and the term is exactly 0
    assert logs[1]["step_term"] == 0.0 and logs[2]["step_term"] == 0.0
    assert (out / "adapter_model.safetensors").is_file()
    run = json.loads((out / "safekeel_run.json").read_text())
    assert run["data"]["plan"]["safety"] == 6 and run["options"]["defence"]["lisa_rho"] == 1.0


def test_without_alignment_or_rho_it_is_sft(setup, tmp_path):
    common = ["--max-steps", "3", "--seed", "5"]
    assert main(argv(setup, tmp_path / "lisa", *common, "--lisa-alignment-steps", "0", "--lisa-rho", "0")) == 0
    sft = argv(setup, tmp_path / "sft", *common)
    sft[sft.index("lisa")] = "sft"
    assert main(sft) == 0
    a, b = logged(tmp_path / "lisa"), logged(tmp_path / "sft")
    assert [a[s]["loss"] for s in (1, 2, 3)] == pytest.approx([b[s]["loss"] for s in (1, 2, 3)], rel=1e-6)


def test_resume_across_switches_rebuilds_the_anchor(setup, tmp_path):
    # cycle A=1, F=2: states A F F A F F; switches at steps 1, 3, 4; checkpoint-2 is inside the F state
    # that began at step 1, so its anchor is neither the initial nor the checkpoint's weights
    opts = ["--max-steps", "6", "--save-steps", "2", "--lisa-alignment-steps", "1", "--lisa-finetune-steps", "2",
            "--lisa-rho", "20"]
    full = tmp_path / "full"
    assert main(argv(setup, full, *opts)) == 0
    from safetensors import safe_open

    with safe_open(str(full / "checkpoint-2" / ANCHOR_FILE), framework="pt") as f:
        assert f.metadata() == {"switch_step": "1", "global_step": "2"}
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    assert main(argv(setup, cut, *opts, "--resume")) == 0
    a, b = logged(full), logged(cut)
    assert b[3]["step_term"] > 0  # the anchor matters at the first resumed step
    for step in (3, 4, 5, 6):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
        assert b[step]["step_term"] == pytest.approx(a[step]["step_term"], rel=1e-4, abs=1e-12), step
    # without the anchor file the state that began at step 1 cannot be rebuilt: one clear error
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copytree(full / "checkpoint-2", bad / "checkpoint-2")
    (bad / "checkpoint-2" / ANCHOR_FILE).unlink()
    assert main(argv(setup, bad, *opts, "--resume")) == 2
