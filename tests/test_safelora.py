"""safelora (Hsu et al. 2024) against a literal transcription of the authors' `projected_weighted` loop
(IBM/SafeLoRA model.py): per layer C = V Vᵀ / ‖V‖_F, the cosine of C B A and B A, the choice by threshold
or by count, B ← C B; then two CLI steps whose saved adapter is the projected one."""

import json

import pytest
import torch
import torch.nn.functional as F

from safekeel.defences.alignment_subspace import (
    alignment_matrix,
    lora_factors,
    lora_layers,
    target_linear_names,
)
from safekeel.defences.safelora import SafeLoRAOptions, project_lora, projection_cosine, select_layers
from safekeel.errors import SafekeelError


def literal_safelora(aligned, base, a_list, b_list, threshold=None, num_layers=None):
    """The authors' loop on dense matrices: (cosines, new B per layer, projected flags)."""
    cosines, projected_b = [], []
    for w_a, w_b, a, b in zip(aligned, base, a_list, b_list):
        v = w_a - w_b
        c = torch.mm(v, v.t()) / torch.norm(v)
        w = torch.mm(c, b)
        cos = F.cosine_similarity(torch.mm(w, a).reshape(1, -1), torch.mm(b, a).reshape(1, -1)).item()
        cosines.append(cos)
        projected_b.append(w)
    if threshold is None:  # select_layers_type "number": the num_layers-th smallest cosine
        threshold = sorted(cosines)[:num_layers][-1]
    flags = [c <= threshold for c in cosines]
    new_b = [w if f else b for w, b, f in zip(projected_b, b_list, flags)]
    return cosines, new_b, flags


def lora_model(seed=0):
    """A tiny Llama with LoRA on every linear layer and random (non-zero) A and B; its aligned weights
    and a "base" model of the same shapes."""
    from peft import LoraConfig, get_peft_model

    from safekeel.testing import build_model, build_tokenizer

    tok = build_tokenizer()
    aligned, base = build_model(tok, seed=seed), build_model(tok, seed=seed + 100)
    names = target_linear_names(aligned, "all-linear")
    weights = {n: m.weight.detach().clone() for n, m in aligned.named_modules() if n in names}
    base_w = {n: m.weight.detach().clone() for n, m in base.named_modules() if n in names}
    model = get_peft_model(aligned, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(seed + 7)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            a, b, _ = lora_factors(layer)
            a.normal_()
            b.normal_()
    matrices = {n: alignment_matrix(weights[n], base_w[n]) for n in names}
    return model, weights, base_w, matrices


def factors(model):
    layers = lora_layers(model)
    return list(layers), [lora_factors(x)[0].detach().clone() for x in layers.values()], \
        [lora_factors(x)[1].detach().clone() for x in layers.values()]


@pytest.mark.parametrize("mode", [{"threshold": "median"}, {"num_layers": 5}, {"num_layers": 1}])
def test_projection_matches_the_authors_loop(mode):
    model, weights, base_w, matrices = lora_model()
    names, a_list, b_list = factors(model)
    assert len(names) == 14
    aligned = [weights[n] for n in names]
    base = [base_w[n] for n in names]
    cosines = [projection_cosine(matrices[n], a, b) for n, a, b in zip(names, a_list, b_list)]
    if mode.get("threshold") == "median":
        mode = {"threshold": sorted(cosines)[7] + 1e-6}
    lit_cos, lit_b, lit_flags = literal_safelora(aligned, base, a_list, b_list, **mode)
    assert cosines == pytest.approx(lit_cos, abs=1e-5)
    report = project_lora(model, matrices, **mode)
    assert [r["layer"] for r in report["layers"]] == names
    assert [r["projected"] for r in report["layers"]] == lit_flags
    assert report["projected"] == sum(lit_flags) == (mode.get("num_layers") or 8)
    _, a_after, b_after = factors(model)
    for i in range(len(names)):
        assert torch.equal(a_after[i], a_list[i])  # A never changes
        assert torch.allclose(b_after[i], lit_b[i], rtol=1e-4, atol=1e-5), names[i]
        if not lit_flags[i]:
            assert torch.equal(b_after[i], b_list[i])


def test_all_layers_above_the_threshold_leave_the_adapter_bit_for_bit():
    model, _, _, matrices = lora_model(1)
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    report = project_lora(model, matrices, threshold=-1.0)  # cos(C ΔW, ΔW) >= 0: C is positive semi-definite
    assert report["projected"] == 0 and all(r["cosine"] > -1.0 for r in report["layers"])
    after = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_all_layers_below_the_threshold_are_all_projected():
    model, _, _, matrices = lora_model(2)
    names, _, b_list = factors(model)
    report = project_lora(model, matrices, threshold=1.0)
    assert report["projected"] == len(names) == 14
    _, _, b_after = factors(model)
    for n, b, b_new in zip(names, b_list, b_after):
        expected = matrices[n].dense() @ b
        assert torch.allclose(b_new, expected, rtol=1e-4, atol=1e-5)


def test_by_count_takes_the_least_similar_and_more_than_all_projects_all():
    cos = [0.9, 0.1, 0.5, 0.3, 0.7]
    assert select_layers(cos, num_layers=2) == (0.3, [False, True, False, True, False])
    assert select_layers(cos, num_layers=10) == (0.9, [True] * 5)
    assert select_layers(cos, threshold=0.5) == (0.5, [False, True, True, True, False])
    assert select_layers([0.2, 0.2, 0.8], num_layers=1) == (0.2, [True, True, False])  # ties at τ: the authors' <=


def test_alignment_matrix_forms_and_a_zero_alignment_matrix():
    torch.manual_seed(0)
    for out, inp in [(6, 9), (9, 6), (5, 5)]:  # C stored for out <= in, V otherwise
        w_a, w_b = torch.randn(out, inp), torch.randn(out, inp)
        mat = alignment_matrix(w_a, w_b)
        assert (mat.c is not None) == (out <= inp)
        v = w_a - w_b
        assert torch.allclose(mat.dense(), v @ v.T / torch.norm(v), atol=1e-5)
    w = torch.randn(6, 9)
    zero = alignment_matrix(w, w.clone())
    assert zero.zero and torch.equal(zero.dense(), torch.zeros(6, 6))
    a, b = torch.randn(3, 9), torch.randn(6, 3)
    assert projection_cosine(zero, a, b) == 0.0  # C ΔW = 0: defined as 0, not NaN
    assert projection_cosine(alignment_matrix(w, torch.randn(6, 9)), a, torch.zeros(6, 3)) == 0.0  # ΔW = 0


def test_target_names_follow_peft():
    from safekeel.testing import build_model

    model = build_model()
    assert "lm_head" not in target_linear_names(model, "all-linear")
    assert len(target_linear_names(model, "all-linear")) == 14
    assert target_linear_names(model, "q_proj, v_proj") == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


@pytest.mark.parametrize("given, message", [({"safelora_num_layers": 3, "safelora_threshold": 0.5}, "not both"),
                                            ({"safelora_threshold": 1.5}, "--safelora-threshold"),
                                            ({"safelora_num_layers": 0}, "--safelora-num-layers")])
def test_bad_options(given, message):
    with pytest.raises(SafekeelError, match=message):
        SafeLoRAOptions.build(given)


def test_defaults_are_the_authors():
    o = SafeLoRAOptions.build({})
    assert (o.safelora_num_layers, o.safelora_threshold) == (10, None)
    o = SafeLoRAOptions.build({"safelora_threshold": 0.5})
    assert (o.safelora_num_layers, o.safelora_threshold) == (None, 0.5)


# -- through the CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safekeel.testing import tiny_setup

    return tiny_setup(tmp_path_factory.mktemp("safelora"))


def _argv(setup, out, *extra):
    return ["train", "--method", "safelora", "--model", setup["model"], "--base", setup["base"], "--dataset",
            setup["data"], "--output-dir", str(out), "--max-steps", "2", "--overlap-check", "none",
            "--disable-tqdm", "--learning-rate", "1e-2", *extra]


def test_two_cli_steps_save_the_projected_adapter(setup, tmp_path):
    from peft import PeftModel

    from safekeel.cli.main import main
    from safekeel.models.loader import load_model

    out = tmp_path / "run"
    assert main(_argv(setup, out, "--save-steps", "2")) == 0
    report = json.loads((out / "safelora_projection.json").read_text())
    assert report["select"] == "number" and report["layers_total"] == 14 and report["projected"] == 10
    # the adapter the checkpoint saved during training (unprojected) and the one in --output-dir
    trained, _ = load_model(setup["model"], dtype="float32", device="cpu")
    raw = PeftModel.from_pretrained(trained, str(out / "checkpoint-2"))
    final_base, _ = load_model(setup["model"], dtype="float32", device="cpu")
    final = PeftModel.from_pretrained(final_base, str(out))  # plain PEFT loading
    base, _ = load_model(setup["base"], dtype="float32", device="cpu")
    names, a_raw, b_raw = factors(raw)
    _, a_fin, b_fin = factors(final)
    modules, base_modules = dict(final.get_base_model().named_modules()), dict(base.named_modules())
    aligned = [modules[n].base_layer.weight.detach() for n in names]
    unaligned = [base_modules[n].weight.detach() for n in names]
    cosines, lit_b, flags = literal_safelora(aligned, unaligned, a_raw, b_raw, num_layers=10)
    assert [r["layer"] for r in report["layers"]] == names
    assert [r["cosine"] for r in report["layers"]] == pytest.approx(cosines, abs=1e-5)
    assert [r["projected"] for r in report["layers"]] == flags and sum(flags) == 10
    for i in range(len(names)):
        assert torch.equal(a_fin[i], a_raw[i])
        assert torch.allclose(b_fin[i], lit_b[i], rtol=1e-4, atol=1e-6), names[i]
        assert torch.equal(b_fin[i], b_raw[i]) != flags[i]  # the projected layers changed, the others did not
    run = json.loads((out / "safekeel_run.json").read_text())
    assert run["status"] == "done" and run["options"]["defence"]["safelora_num_layers"] == 10


def test_full_fine_tuning_is_refused_with_one_line(setup, tmp_path, capsys):
    from safekeel.cli.main import main

    assert main(_argv(setup, tmp_path / "run", "--full")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "safelora" in err and "--full" in err, err
    assert not (tmp_path / "run").exists()
