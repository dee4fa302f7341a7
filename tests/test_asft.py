"""asft (Yang et al. 2025) against a literal transcription of the authors' training-loop term
(PKU-YuanGroup/AsFT utils/AsFT_train_utils.py): Σ λ ‖(I − C) B A‖²_F with the dense C = V Vᵀ / ‖V‖_F and
I = torch.eye, its value and gradients; the edge cases; two CLI steps (LoRA and full); and the term
added once per optimizer step under gradient accumulation."""

import json

import pytest
import torch

from safekeel.defences.alignment_subspace import alignment_matrix
from safekeel.defences.asft import AsFT, AsFTOptions, dense_penalty, lora_penalty
from safekeel.errors import SafekeelError


def literal_lora_term(layers, lambda_reg=1.0, scaling=1.0):
    """The authors' loop: for each layer, delta_w = B A, c_hat = V Vᵀ / ‖V‖, reg += λ ‖(I − c_hat) delta_w‖²."""
    reg = 0.0
    for w_a, w_b, a, b in layers:
        delta_w = scaling * torch.mm(b, a)
        vec = w_a - w_b
        c_hat = torch.mm(vec, vec.t()) / torch.norm(vec)
        identity = torch.eye(c_hat.shape[0])
        reg += lambda_reg * torch.norm((identity - c_hat) @ delta_w, p="fro") ** 2
    return reg


def random_layers(shapes, r=3, seed=0):
    torch.manual_seed(seed)
    return [(torch.randn(o, i), torch.randn(o, i), torch.randn(r, i, requires_grad=True),
             torch.randn(o, r, requires_grad=True)) for o, i in shapes]


@pytest.mark.parametrize("scaling", [1.0, 2.5])
def test_lora_term_and_its_gradient_match_the_authors_loop(scaling):
    layers = random_layers([(6, 9), (9, 6), (5, 5), (12, 4)])  # C stored as C and as V
    params = [p for *_, a, b in layers for p in (a, b)]
    expected = literal_lora_term(layers, 0.7, scaling)
    grads_lit = torch.autograd.grad(expected, params)
    ours = 0.7 * sum(lora_penalty(alignment_matrix(w_a, w_b), a, b, scaling) for w_a, w_b, a, b in layers)
    grads = torch.autograd.grad(ours, params)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    for g, g_lit in zip(grads, grads_lit):
        assert torch.allclose(g, g_lit, rtol=1e-4, atol=1e-4 * g_lit.abs().max().item())


def test_dense_term_and_its_gradient_match_autograd_of_the_formula():
    torch.manual_seed(1)
    for out, inp in [(6, 9), (9, 6)]:
        w_a, w_b = torch.randn(out, inp), torch.randn(out, inp)
        w = (w_a + 0.3 * torch.randn(out, inp)).requires_grad_(True)
        vec = w_a - w_b
        c_hat = vec @ vec.T / torch.norm(vec)
        literal = torch.norm((torch.eye(out) - c_hat) @ (w - w_a), p="fro") ** 2
        (g_lit,) = torch.autograd.grad(literal, w)
        ours = dense_penalty(alignment_matrix(w_a, w_b), w, w_a)
        (g,) = torch.autograd.grad(ours, w)
        assert ours.item() == pytest.approx(literal.item(), rel=1e-5)
        assert torch.allclose(g, g_lit, rtol=1e-4, atol=1e-5)


def test_an_update_inside_the_alignment_subspace_costs_nothing():
    """C = V Vᵀ/‖V‖_F is the orthogonal projector onto V's columns when V's k singular values are all √k
    (V = √k Q R, Q [out, k] and Rᵀ [in, k] orthonormal): then ΔW = Q M is not penalised; ΔW off it is."""
    torch.manual_seed(2)
    out, inp, k, r = 10, 8, 3, 2
    q = torch.linalg.qr(torch.randn(out, k))[0]
    rows = torch.linalg.qr(torch.randn(inp, k))[0].T
    w_b = torch.randn(out, inp)
    mat = alignment_matrix(w_b + k ** 0.5 * q @ rows, w_b)
    assert torch.allclose(mat.dense(), q @ q.T, atol=1e-5)
    a = torch.randn(r, inp)
    inside = q @ torch.randn(k, r)  # B's columns in span(Q): ΔW = B A inside the subspace
    scale = float((inside @ a).norm() ** 2)  # float32 rounding only: relative 1e-6 of the update's size
    assert lora_penalty(mat, a, inside).item() == pytest.approx(0.0, abs=1e-6 * scale)
    off = torch.randn(out, r)
    residual = (torch.eye(out) - q @ q.T) @ off @ a
    assert lora_penalty(mat, a, off).item() == pytest.approx(float(residual.norm() ** 2), rel=1e-5)


def test_a_zero_update_costs_nothing_and_has_no_gradient():
    torch.manual_seed(3)
    mat = alignment_matrix(torch.randn(6, 9), torch.randn(6, 9))
    a, b = torch.randn(3, 9, requires_grad=True), torch.zeros(6, 3, requires_grad=True)  # LoRA's B starts at 0
    value = lora_penalty(mat, a, b)
    assert value.item() == 0.0
    ga, gb = torch.autograd.grad(value, (a, b))
    assert not ga.any() and not gb.any()
    w = torch.randn(6, 9)
    w_live = w.clone().requires_grad_(True)
    dense = dense_penalty(mat, w_live, w)
    assert dense.item() == 0.0 and not torch.autograd.grad(dense, w_live)[0].any()


def test_a_zero_alignment_matrix_penalises_the_whole_update_without_nan():
    """V = 0 (a layer the alignment did not change): C = 0, so the term is ‖ΔW‖² (the authors' 0/0 is NaN)."""
    torch.manual_seed(4)
    w = torch.randn(6, 9)
    mat = alignment_matrix(w, w.clone())
    assert mat.zero
    a, b = torch.randn(3, 9, requires_grad=True), torch.randn(6, 3, requires_grad=True)
    value = lora_penalty(mat, a, b)
    assert value.item() == pytest.approx(float((b @ a).detach().norm() ** 2), rel=1e-5)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(value, (a, b)))
    w_live = (w + torch.randn(6, 9)).requires_grad_(True)
    dense = dense_penalty(mat, w_live, w)
    assert dense.item() == pytest.approx(float((w_live - w).detach().norm() ** 2), rel=1e-5)
    assert torch.isfinite(torch.autograd.grad(dense, w_live)[0]).all()


def test_bad_options():
    with pytest.raises(SafekeelError, match="--asft-lambda"):
        AsFTOptions.build({"asft_lambda": -1})
    assert AsFTOptions.build({}).asft_lambda == 1.0  # the authors' scripts


# -- through the CLI and the trainer ------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safekeel.testing import tiny_setup

    return tiny_setup(tmp_path_factory.mktemp("asft"))


def _logs(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("mode", [[], ["--full"]], ids=["lora", "full"])
def test_two_cli_steps_log_the_penalty(setup, tmp_path, mode):
    from safekeel.cli.main import main

    out = tmp_path / "run"
    argv = ["train", "--method", "asft", "--model", setup["model"], "--base", setup["base"], "--dataset",
            setup["data"], "--output-dir", str(out), "--max-steps", "2", "--logging-steps", "1", "--learning-rate",
            "1e-2", "--asft-lambda", "2", "--overlap-check", "none", "--disable-tqdm", *mode]
    assert main(argv) == 0
    logs = _logs(out)
    assert [r["step"] for r in logs] == [1, 2]
    # step 1 starts from the aligned weights (LoRA B = 0, or W = W_aligned): no update, no penalty
    assert logs[0]["step_term"] == 0.0 < logs[1]["step_term"]
    assert (out / ("model.safetensors" if mode else "adapter_model.safetensors")).is_file()


def test_the_term_is_added_once_per_optimizer_step_under_accumulation(setup, tmp_path, monkeypatch):
    """Gradient accumulation 2: step_loss runs once per optimizer step (not per micro-batch), and the logged
    term is λ times the authors' literal sum on the LoRA factors at that step."""
    from safekeel.defences.alignment_subspace import lora_factors
    from safekeel.models.loader import load_model
    from safekeel.testing import tiny_config
    from safekeel.training.run import train

    calls = []
    original = AsFT.step_loss

    def recording(self, model, state):
        value = original(self, model, state)
        factors = {n: tuple(p.detach().clone() for p in lora_factors(layer)[:2]) for n, layer in self.layers.items()}
        calls.append((state.global_step, float(value.detach()), factors))
        return value

    monkeypatch.setattr(AsFT, "step_loss", recording)
    out = tmp_path / "run"
    cfg = tiny_config(setup, out, method="asft", tokens=None, base=setup["base"], max_steps=3,
                      gradient_accumulation_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                      asft_lambda=0.5)
    assert train(cfg, progress=False).global_step == 3
    assert [c[0] for c in calls] == [0, 1, 2]  # 3 optimizer steps x 2 micro-batches: 3 calls
    aligned, _ = load_model(setup["model"], dtype="float32", device="cpu")
    base, _ = load_model(setup["base"], dtype="float32", device="cpu")
    am, bm = dict(aligned.named_modules()), dict(base.named_modules())
    for _, value, factors in calls:
        layers = [(am[n].weight.detach(), bm[n].weight.detach(), a, b) for n, (a, b) in factors.items()]
        assert value == pytest.approx(float(literal_lora_term(layers, 0.5)), rel=1e-4, abs=1e-12)
    assert calls[-1][1] > 0
    assert [r["step_term"] for r in _logs(out)] == pytest.approx([c[1] for c in calls], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("method", ["asft", "safelora"])
@pytest.mark.parametrize("extra, message", [({"load_in_4bit": True}, "--load-in-4bit"),
                                            ({"fsdp": "full_shard"}, "FSDP")])
def test_quantised_or_sharded_runs_are_refused_before_loading(setup, tmp_path, method, extra, message):
    """Both read W_aligned − W_base layer by layer: 4-bit weights and sharded parameters are refused."""
    from safekeel.testing import tiny_config

    with pytest.raises(SafekeelError, match=message):
        tiny_config(setup, tmp_path, method=method, tokens=None, base=setup["base"], **extra)
