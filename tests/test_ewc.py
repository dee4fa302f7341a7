"""ewc (seed 002): the empirical Fisher against a literal loop over examples (per-example squares, not the
square of a batch gradient), its normalisation, the penalty and its gradient λ F (θ − θ*) (autograd and
gradcheck), the edge cases (zero Fisher, unchanged weights), LoRA's zero Fisher on A, the penalty added
once per optimizer step under gradient_accumulation_steps=2, two steps through the CLI and two DDP ranks."""

import json

import pytest
import torch

from safekeel.cli.main import main
from safekeel.defences.ewc import EWCOptions, empirical_fisher, ewc_penalty, normalise
from safekeel.errors import SafekeelError
from safekeel.losses import answer_ce
from safekeel.testing import one_and_two_ranks, tiny_config, tiny_safety_rows, tiny_setup
from safekeel.training.run import prepare


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("ewc"))


@pytest.fixture(scope="module")
def model_and_batches():
    from safekeel.testing import build_model, build_tokenizer
    from safekeel.training.collate import Collator, encode_rows

    tok = build_tokenizer()
    model = build_model(tok, seed=5).eval()
    examples, _ = encode_rows(tok, tiny_safety_rows(4), max_length=128, post_positions=0)
    collate = Collator(tok.pad_token_id)
    singles = [{k: v for k, v in collate([e]).items() if not k.startswith("post_")} for e in examples]
    return model, singles, collate(examples)


def literal_fisher(model, params, singles):
    """Per example: −log p(y | x) from a full forward (sum of the answer tokens' log-softmax), its
    gradient, squared; the mean over examples."""
    out = [torch.zeros_like(p) for p in params]
    for b in singles:
        logp = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.log_softmax(-1)[0]
        nll = 0.0
        for t in range(b["answer_mask"].shape[1]):
            if b["answer_mask"][0, t]:
                nll = nll - logp[b["answer_index"][0, t], b["answer_targets"][0, t]]
        grads = torch.autograd.grad(nll, params)
        for o, g in zip(out, grads):
            o += g.square()
    return [o / len(singles) for o in out]


def test_the_fisher_is_the_mean_of_per_example_squared_gradients(model_and_batches):
    model, singles, whole = model_and_batches
    params = [model.lm_head.weight, model.model.layers[1].mlp.down_proj.weight]
    fisher = empirical_fisher(model, params, singles)
    want = literal_fisher(model, params, singles)
    for f, w in zip(fisher, want):
        torch.testing.assert_close(f, w, rtol=1e-4, atol=1e-9)
    # not the square of the batch's gradient (the mean of squares ≥ the square of the mean, strictly here)
    nll = answer_ce(model, whole).sum() / len(singles)
    batch_sq = [g.square() for g in torch.autograd.grad(nll, params)]
    assert float(sum((f - b).sum() for f, b in zip(fisher, batch_sq))) > 0
    assert not torch.allclose(fisher[0], batch_sq[0], rtol=1e-2)


def test_normalisation():
    f = [torch.tensor([1.0, 3.0]), torch.tensor([[0.0, 4.0]])]
    mean = normalise(f, "mean")
    assert float(torch.cat([x.flatten() for x in mean]).mean()) == pytest.approx(1.0)
    assert mean[1].flatten().tolist() == pytest.approx([0.0, 2.0])
    top = normalise(f, "max")
    assert max(float(x.max()) for x in top) == pytest.approx(1.0) and top[0].tolist() == pytest.approx([0.25, 0.75])
    assert normalise(f, "none") is f
    zero = [torch.zeros(3)]
    assert all(torch.equal(a, b) for a, b in zip(normalise(zero, "mean"), zero))  # no 0/0


def _literal_penalty(params, anchors, fisher, lam):
    total = 0.0
    for p, a, f in zip(params, anchors, fisher):
        for x, y, w in zip(p.flatten().tolist(), a.flatten().tolist(), f.flatten().tolist()):
            total += w * (x - y) ** 2
    return lam / 2 * total


def test_the_penalty_and_its_gradient():
    torch.manual_seed(0)
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True)]
    anchors = [p.detach() + 0.3 * torch.randn_like(p) for p in params]
    fisher = [torch.rand_like(p) for p in params]
    lam = 2.5
    value = ewc_penalty(params, anchors, fisher, lam)
    assert float(value.detach()) == pytest.approx(_literal_penalty(params, anchors, fisher, lam), rel=1e-5)
    grads = torch.autograd.grad(value, params)
    for g, p, a, f in zip(grads, params, anchors, fisher):
        torch.testing.assert_close(g, lam * f * (p.detach() - a))
    # double-precision gradcheck of the custom backward
    dp = [p.detach().double().requires_grad_() for p in params]
    da, df = [a.double() for a in anchors], [f.double() for f in fisher]

    def fn(*xs):
        return ewc_penalty(list(xs), da, df, lam).double()

    assert torch.autograd.gradcheck(fn, tuple(dp), eps=1e-6, atol=1e-4)


def test_a_zero_fisher_or_unchanged_weights_give_no_penalty_and_no_gradient():
    torch.manual_seed(1)
    params = [torch.randn(5, requires_grad=True)]
    moved = [params[0].detach() + 1.0]
    zero = ewc_penalty(params, moved, [torch.zeros(5)], 3.0)
    same = ewc_penalty(params, [params[0].detach().clone()], [torch.rand(5)], 3.0)
    for value in (zero, same):
        assert float(value.detach()) == 0.0
        (g,) = torch.autograd.grad(value, params)
        assert torch.equal(g, torch.zeros(5))


def _prepared(setup, tmp_path, **over):
    cfg = tiny_config(setup, tmp_path, method="ewc", tokens=None, safety_data=setup["safety"], lora_dropout=0.0,
                      **over)
    return prepare(cfg, progress=False)


def test_lora_fisher_is_zero_on_a_and_positive_on_b(setup, tmp_path):
    d = _prepared(setup, tmp_path, max_steps=1).trainer.defence
    names = d.names
    a = [f for n, f in zip(names, d.fisher) if "lora_A" in n]
    b = [f for n, f in zip(names, d.fisher) if "lora_B" in n]
    assert a and b and len(a) + len(b) == len(d.fisher)
    assert all(float(f.abs().max()) == 0.0 for f in a)  # B = 0 at initialisation: ∂L/∂A = 0
    assert all(float(f.max()) > 0 for f in b)
    flat = torch.cat([f.flatten() for f in d.fisher])
    assert float(flat.mean()) == pytest.approx(1.0, rel=1e-5)  # --ewc-fisher-norm mean
    assert all(torch.equal(p.detach(), a) for p, a in zip(d.params, d.anchors))


@pytest.mark.parametrize("zero_fisher", [False, True])
def test_the_penalty_is_added_once_per_step_under_accumulation(setup, tmp_path, zero_fisher):
    """gradient_accumulation_steps=2, SGD, no clipping: at step 2 the accumulated gradient is the two
    micro-batches' CE gradient + λ F (θ − θ*) once (not twice); with a zero Fisher, the CE gradient alone.
    step_loss runs once per optimizer step, and the log's ewc_penalty is (λ/2) Σ F (θ − θ*)²."""
    lam = 50.0
    prep = _prepared(setup, tmp_path, full=True, max_steps=2, gradient_accumulation_steps=2,
                     per_device_train_batch_size=2, optim="sgd", max_grad_norm=0.0, learning_rate=0.05,
                     lr_scheduler_type="constant", ewc_lambda=lam)
    trainer, d = prep.trainer, prep.trainer.defence
    if zero_fisher:
        d.fisher = [torch.zeros_like(f) for f in d.fisher]
    seen, calls, cap = [], [], {}
    real_loss, real_step, real_hook = trainer.compute_loss, d.step_loss, d.before_optimizer_step

    def record(model, inputs, return_outputs=False, num_items_in_batch=None):
        seen.append((trainer.state.global_step, dict(inputs), num_items_in_batch))
        return real_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def step_loss(model, state):
        calls.append(state.global_step)
        return real_step(model, state)

    def hook(model, optimizer, state):
        if state.global_step == 1:
            batches = [(b, n) for s, b, n in seen if s == 1]
            ce = sum(answer_ce(model, b).sum() / n for b, n in batches)
            g_ce = torch.autograd.grad(ce, d.params)
            cap["expected"] = [g + lam * f * (p.detach() - a) for g, f, p, a in zip(g_ce, d.fisher, d.params, d.anchors)]
            cap["got"] = [p.grad.detach().clone() for p in d.params]
            cap["ce_only"] = g_ce
            cap["penalty"] = _literal_penalty(d.params, d.anchors, d.fisher, lam)
        return real_hook(model, optimizer, state)

    trainer.compute_loss, d.step_loss, d.before_optimizer_step = record, step_loss, hook
    trainer.train()
    assert calls == [0, 1] and len(seen) == 4
    for got, want in zip(cap["got"], cap["expected"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    moved = max(float((g - c).abs().max()) for g, c in zip(cap["got"], cap["ce_only"]))
    assert (moved == pytest.approx(0.0, abs=1e-6)) if zero_fisher else moved > 1e-4
    logs = {r["step"]: r for r in map(json.loads, (tmp_path / "train_log.jsonl").read_text().splitlines()) if "loss" in r}
    assert logs[1]["ewc_penalty"] == 0.0  # θ = θ* at the first step
    assert logs[2]["ewc_penalty"] == pytest.approx(cap["penalty"], rel=1e-4)
    assert (logs[2]["ewc_penalty"] == 0.0) == zero_fisher
    assert logs[2]["step_term"] == pytest.approx(logs[2]["ewc_penalty"])


def test_fisher_examples_and_norm_options(setup, tmp_path):
    d = _prepared(setup, tmp_path, max_steps=1, full=True, ewc_fisher_examples=2, ewc_fisher_norm="max").trainer.defence
    assert len(d.rows) == 2
    assert max(float(f.max()) for f in d.fisher) == pytest.approx(1.0)
    assert len(d.params) == sum(1 for p in d.ctx.model.parameters() if p.requires_grad)


def test_two_steps_through_the_cli(setup, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--method", "ewc", "--model", setup["model"], "--dataset", setup["data"], "--output-dir", str(out),
            "--max-steps", "2", "--overlap-check", "none", "--disable-tqdm", "--logging-steps", "1", "--learning-rate",
            "1e-2", "--safety-data", setup["safety"], "--ewc-lambda", "5", "--ewc-fisher-examples", "4"]
    assert main(argv) == 0
    logs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in logs] == [1, 2]
    assert logs[0]["ewc_penalty"] == 0.0 and logs[1]["ewc_penalty"] > 0
    run = json.loads((out / "safekeel_run.json").read_text())
    assert run["options"]["defence"] == {"ewc_lambda": 5.0, "ewc_fisher_examples": 4, "ewc_fisher_norm": "mean"}


@pytest.mark.parametrize("bad, flag", [({"ewc_lambda": -1}, "--ewc-lambda"), ({"ewc_fisher_examples": -2},
                                       "--ewc-fisher-examples"), ({"ewc_fisher_norm": "sum"}, "--ewc-fisher-norm")])
def test_bad_options_name_their_flag(bad, flag):
    with pytest.raises(SafekeelError, match=flag):
        EWCOptions.build(bad)


def test_two_ddp_processes_split_the_fisher_and_match_one(tmp_path):
    """torchrun, gloo, 2 ranks of batch 1 (each rank half of the Fisher examples, summed) against one process
    of batch 2: the same penalties and losses."""
    s = tiny_setup(tmp_path / "s", n_rows=2)
    a, b = one_and_two_ranks(
        {"model": s["model"], "data": s["data"], "tokens": None}, tmp_path,
        {"method": "ewc", "tokens": None, "safety_data": s["safety"], "max_steps": 3, "ewc_lambda": 20.0,
         "lora_dropout": 0.0, "learning_rate": 1e-2, "dataloader_num_workers": 0}, port=29573)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in (1, 2, 3):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4)
        assert b[step]["ewc_penalty"] == pytest.approx(a[step]["ewc_penalty"], rel=1e-3, abs=1e-7)
    assert a[3]["ewc_penalty"] > 0
