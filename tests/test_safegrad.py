"""safegrad (gradient surgery, seed 002): the projection against a literal element-by-element loop (both
scopes, both rules, the edge cases), the hook on the accumulated gradient of gradient_accumulation_steps=2
before clipping (the edit, the clipped update and the logged grad norm), the deterministic cycle through
the safety batches, and two steps through the CLI."""

import json

import pytest
import torch

from safekeel.cli.main import main
from safekeel.defences.safegrad import SafeGrad, SafeGradOptions, surgery, unwrap
from safekeel.errors import SafekeelError
from safekeel.losses import answer_ce
from safekeel.testing import one_and_two_ranks, tiny_config, tiny_setup
from safekeel.training.run import prepare


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("safegrad"))


def literal(task, safety, scope="global", when="conflict"):
    """PCGrad by hand on Python floats: per group (all tensors, or each one), if ‖s‖² > 0 and (g·s < 0 or
    `always`), g − (g·s / ‖s‖²) s; else g. Returns flat lists per tensor."""
    g = [t.flatten().tolist() if t is not None else [0.0] * s.numel() for t, s in zip(task, safety)]
    s = [x.flatten().tolist() for x in safety]
    groups = [list(range(len(g)))] if scope == "global" else [[i] for i in range(len(g))]
    out = [list(x) for x in g]
    for group in groups:
        dot = sum(a * b for i in group for a, b in zip(g[i], s[i]))
        norm2 = sum(b * b for i in group for b in s[i])
        if norm2 == 0 or (when == "conflict" and dot >= 0):
            continue
        for i in group:
            out[i] = [a - dot / norm2 * b for a, b in zip(g[i], s[i])]
    return out


def _apply(task, edited):
    return [(e if e is not None else t.float()).flatten().tolist() for t, e in zip(task, edited)]


@pytest.mark.parametrize("scope", ["global", "per-tensor"])
@pytest.mark.parametrize("when", ["conflict", "always"])
def test_surgery_matches_the_literal_loop(scope, when):
    torch.manual_seed(0)
    safety = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2)]
    # tensor 0 conflicts strongly, tensor 1 agrees, tensor 2 is noise: the scopes disagree on what to edit
    task = [-2 * safety[0] + 0.1 * torch.randn(3, 4), safety[1] + 0.1 * torch.randn(5), torch.randn(2, 2)]
    edited, info = surgery(task, safety, scope, when)
    want = literal(task, safety, scope, when)
    for got, exp in zip(_apply(task, edited), want):
        assert got == pytest.approx(exp, rel=1e-5, abs=1e-6)
    if when == "conflict" and scope == "per-tensor":
        assert edited[1] is None  # the agreeing tensor is left alone
        assert edited[0] is not None
    flat = torch.cat([t.flatten() for t in task])
    flat_s = torch.cat([t.flatten() for t in safety])
    assert info["cos"] == pytest.approx(float(flat @ flat_s / (flat.norm() * flat_s.norm())), rel=1e-5)


def test_a_conflict_is_projected_onto_the_plane_orthogonal_to_the_safety_gradient():
    torch.manual_seed(1)
    safety = [torch.randn(6), torch.randn(2, 3)]
    task = [-s + 0.3 * torch.randn_like(s) for s in safety]
    edited, info = surgery(task, safety)
    assert info["projected"] == 1.0 and info["cos"] < 0
    dot = sum(float((e * s).sum()) for e, s in zip(edited, safety))
    assert abs(dot) < 1e-5  # g'·g_s = 0


def test_no_conflict_leaves_the_gradient_unchanged():
    torch.manual_seed(2)
    safety = [torch.randn(4, 4), torch.randn(3)]
    task = [s + 0.5 * torch.randn_like(s) for s in safety]  # positive dot
    edited, info = surgery(task, safety)
    assert edited == [None, None] and info["projected"] == 0.0 and info["cos"] > 0


def test_a_fully_opposite_gradient_is_projected_to_zero():
    safety = [torch.tensor([1.0, -2.0, 3.0]), torch.tensor([[0.5, 0.25]])]
    task = [-3 * s for s in safety]
    edited, info = surgery(task, safety)
    assert info["cos"] == pytest.approx(-1.0)
    for e in edited:
        assert e.abs().max() < 1e-6


def test_a_zero_safety_gradient_changes_nothing_and_makes_no_nan():
    task = [torch.tensor([1.0, -1.0]), torch.tensor([2.0])]
    for scope in ("global", "per-tensor"):
        for when in ("conflict", "always"):
            edited, info = surgery(task, [torch.zeros(2), torch.zeros(1)], scope, when)
            assert edited == [None, None]
            assert info == {"cos": 0.0, "projected": 0.0}
    edited, _ = surgery(task, [None, None])  # parameters the safety loss does not reach
    assert edited == [None, None]


def test_a_parameter_without_task_gradient_gets_the_projection_component():
    safety = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    task = [torch.tensor([-1.0, 1.0]), None]
    edited, _ = surgery(task, safety)
    coef = -1.0 / 5.0
    assert edited[0].tolist() == pytest.approx([-1.0 - coef, 1.0])
    assert edited[1].tolist() == pytest.approx([-coef * 2.0])


class _State:
    def __init__(self, step):
        self.global_step = step


def test_the_hook_leaves_grad_bit_for_bit_or_writes_the_projection(monkeypatch):
    """The hook on a plain module: zero safety gradient → .grad untouched (same tensor, same bits);
    an opposite one → ~0."""
    net = torch.nn.Linear(3, 2)
    torch.manual_seed(3)
    grads = [torch.randn_like(p) for p in net.parameters()]
    for p, g in zip(net.parameters(), grads):
        p.grad = g.clone()
    before = [p.grad for p in net.parameters()]
    d = SafeGrad(SafeGradOptions.build({}))
    monkeypatch.setattr(d, "safety_gradient", lambda model, step: ([torch.zeros_like(p) for p in model.parameters()], 1.0))
    stats = d.before_optimizer_step(net, None, _State(0))
    assert all(p.grad is b and torch.equal(p.grad, g) for p, b, g in zip(net.parameters(), before, grads))
    assert stats == {"safegrad_cos": 0.0, "safegrad_projected": 0.0, "safegrad_safety_ce": 1.0}
    monkeypatch.setattr(d, "safety_gradient", lambda model, step: ([-0.5 * g for g in grads], 1.0))
    stats = d.before_optimizer_step(net, None, _State(1))
    assert stats["safegrad_projected"] == 1.0 and stats["safegrad_cos"] == pytest.approx(-1.0)
    assert all(p.grad.abs().max() < 1e-6 for p in net.parameters())


def _prepared(setup, tmp_path, **over):
    cfg = tiny_config(setup, tmp_path, method="safegrad", tokens=None, safety_data=setup["safety"], lora_dropout=0.0,
                      **over)
    return prepare(cfg, progress=False)


@pytest.mark.parametrize("full", [False, True])
def test_the_edit_is_the_projection_of_the_accumulated_gradient_and_is_clipped_after(setup, tmp_path, full):
    """gradient_accumulation_steps=2: the hook sees Σ of both micro-batches' gradients (checked against an
    independent autograd of the two batches), writes the literal projection of it, and the SGD update is
    −lr · clip(edited): clipping (to 1e-3) comes after the edit, and the logged grad_norm is the edited one."""
    lr, clip = 0.5, 1e-3
    prep = _prepared(setup, tmp_path, full=full, max_steps=1, gradient_accumulation_steps=2,
                     per_device_train_batch_size=2, safegrad_when="always", optim="sgd", max_grad_norm=clip,
                     learning_rate=lr, lr_scheduler_type="constant")
    trainer, d = prep.trainer, prep.trainer.defence
    seen, cap = [], {}
    real_loss, real_hook = trainer.compute_loss, d.before_optimizer_step

    def record(model, inputs, return_outputs=False, num_items_in_batch=None):
        seen.append((dict(inputs), num_items_in_batch))
        return real_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def hook(model, optimizer, state):
        net = unwrap(model)
        params = [p for p in net.parameters() if p.requires_grad]
        cap["params"], cap["weights"] = params, [p.detach().clone() for p in params]
        cap["before"] = [p.grad.detach().clone() for p in params]
        total = sum(answer_ce(net, inputs).sum() / n for inputs, n in seen)  # the two micro-batches
        cap["expected_g"] = torch.autograd.grad(total, params)
        batch = d.batches[0]
        safety = answer_ce(net, batch).sum() / batch["answer_mask"].sum()
        cap["g_s"] = torch.autograd.grad(safety, params)
        out = real_hook(model, optimizer, state)
        cap["after"] = [p.grad.detach().clone() for p in params]
        return out

    trainer.compute_loss, d.before_optimizer_step = record, hook
    trainer.train()
    assert len(seen) == 2
    for got, exp in zip(cap["before"], cap["expected_g"]):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-6)
    want = literal(cap["before"], cap["g_s"], when="always")
    for got, exp in zip(cap["after"], want):
        assert got.flatten().tolist() == pytest.approx(exp, rel=1e-4, abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(cap["after"], cap["before"]))  # the edit did something
    norm = float(torch.cat([g.flatten() for g in cap["after"]]).norm())
    logs = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert logs[0]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert logs[0]["safegrad_projected"] == 1.0
    scale = min(1.0, clip / (norm + 1e-6))
    assert scale < 1  # clipping did act
    for p, w, g in zip(cap["params"], cap["weights"], cap["after"]):
        torch.testing.assert_close(p.detach(), w - lr * scale * g, rtol=1e-5, atol=1e-7)


def test_without_conflict_the_trained_gradient_is_untouched(setup, tmp_path):
    """The tiny model's task and safety gradients agree at the first step (cos > 0): .grad is not written."""
    prep = _prepared(setup, tmp_path, max_steps=1)
    d, cap = prep.trainer.defence, {}
    real_hook = d.before_optimizer_step

    def hook(model, optimizer, state):
        params = [p for p in unwrap(model).parameters() if p.requires_grad]
        before = [(p.grad, p.grad.detach().clone()) for p in params]
        cap["stats"] = real_hook(model, optimizer, state)
        cap["same"] = all(p.grad is t and torch.equal(p.grad, c) for p, (t, c) in zip(params, before))
        return cap["stats"]

    d.before_optimizer_step = hook
    prep.trainer.train()
    assert cap["stats"]["safegrad_cos"] > 0 and cap["stats"]["safegrad_projected"] == 0.0
    assert cap["same"]


def test_the_safety_batches_cycle_with_the_global_step(setup, tmp_path):
    prep = _prepared(setup, tmp_path, max_steps=1, safegrad_batch_size=4)
    d, net = prep.trainer.defence, prep.trainer.model
    assert [b["input_ids"].shape[0] for b in d.batches] == [4, 2]  # the 6 safety rows
    g0, ce0 = d.safety_gradient(net, 0)
    g2, ce2 = d.safety_gradient(net, 2)
    _, ce1 = d.safety_gradient(net, 1)
    assert ce0 == ce2 and all(torch.equal(a, b) for a, b in zip(g0, g2) if a is not None)
    assert ce1 != ce0
    again = _prepared(setup, tmp_path / "again", max_steps=1, safegrad_batch_size=4).trainer.defence
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(d.batches, again.batches))


def test_the_default_safety_batch_is_the_training_batch(setup, tmp_path):
    prep = _prepared(setup, tmp_path, max_steps=1, per_device_train_batch_size=3)
    assert [b["input_ids"].shape[0] for b in prep.trainer.defence.batches] == [3, 3]


def test_two_steps_through_the_cli(setup, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--method", "safegrad", "--model", setup["model"], "--dataset", setup["data"], "--output-dir",
            str(out), "--max-steps", "2", "--overlap-check", "none", "--disable-tqdm", "--logging-steps", "1",
            "--safety-data", setup["safety"], "--safegrad-scope", "per-tensor", "--safegrad-when", "always"]
    assert main(argv) == 0
    logs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in logs] == [1, 2]
    for r in logs:
        assert -1 <= r["safegrad_cos"] <= 1 and 0 < r["safegrad_projected"] <= 1 and r["safegrad_safety_ce"] > 0
    run = json.loads((out / "safekeel_run.json").read_text())
    assert run["options"]["defence"] == {"safegrad_batch_size": None, "safegrad_scope": "per-tensor",
                                         "safegrad_when": "always"}


@pytest.mark.parametrize("bad, flag", [({"safegrad_batch_size": 0}, "--safegrad-batch-size"),
                                       ({"safegrad_scope": "layer"}, "--safegrad-scope"),
                                       ({"safegrad_when": "sometimes"}, "--safegrad-when")])
def test_bad_options_name_their_flag(bad, flag):
    with pytest.raises(SafekeelError, match=flag):
        SafeGradOptions.build(bad)


def test_sharded_training_is_refused_in_one_line_before_loading(setup, tmp_path, monkeypatch, capsys):
    from safekeel.models import loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    argv = ["train", "--method", "safegrad", "--model", setup["model"], "--dataset", setup["data"], "--output-dir",
            str(tmp_path / "out"), "--overlap-check", "none", "--safety-data", setup["safety"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not FSDP" in err, err


def test_two_ddp_processes_make_the_same_edit_as_one(tmp_path):
    """torchrun, gloo, 2 ranks of batch 1 against 1 process of batch 2: the same safety batch on every rank,
    so the same losses and the same cosine at both steps (step 2 after an edited update)."""
    s = tiny_setup(tmp_path / "s", n_rows=2)
    a, b = one_and_two_ranks(
        {"model": s["model"], "data": s["data"], "tokens": None}, tmp_path,
        {"method": "safegrad", "tokens": None, "safety_data": s["safety"], "max_steps": 2, "safegrad_batch_size": 2,
         "safegrad_when": "always", "lora_dropout": 0.0, "learning_rate": 1e-2, "dataloader_num_workers": 0},
        port=29571)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in (1, 2):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4)
        assert b[step]["safegrad_cos"] == pytest.approx(a[step]["safegrad_cos"], rel=1e-3, abs=1e-5)
        assert b[step]["safegrad_projected"] == a[step]["safegrad_projected"] == 1.0
    assert a[2]["loss"] != pytest.approx(a[1]["loss"], rel=1e-4)
