"""`safekeel layers rank`: the skip hook equals a model with that layer removed (logits and cached greedy
generation), the ranking order and drops from given refusal rates, the ranking loop attributes each
measured rate to the layer that was skipped (a fake `generate` that recognises the ablated model), and
the CLI writes the JSON that `train --method freeze --freeze-layers top:2` then freezes."""

import copy
import json

import pytest
import torch

from safekeel.cli.main import main
from safekeel.data.records import PromptRecord
from safekeel.defences.freeze import decoder_layers
from safekeel.evaluation.layer_rank import evaluation_set_warning, rank_from_rates, rank_layers, skip_layer
from safekeel.judges import get_judge
from safekeel.testing import build_model, build_tokenizer, tiny_rows

N_LAYERS = 3


def removed(model, i, path="model.layers"):
    """A literal twin: a copy of `model` whose decoder layer i is deleted from the stack."""
    twin = copy.deepcopy(model)
    obj = twin
    for part in path.split("."):
        obj = getattr(obj, part)
    del obj[i]
    return twin


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=64, n_embd=16, n_layer=N_LAYERS, n_head=2)).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("i", range(N_LAYERS))
def test_skipping_a_layer_equals_removing_it(arch, i):
    model = build_model(build_tokenizer(), num_layers=N_LAYERS) if arch == "llama" else gpt2()
    path, layers = decoder_layers(model)
    ids = torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(i))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        literal = removed(model, i, path)(ids, use_cache=False).logits
        with skip_layer(layers[i]):
            skipped = model(ids, use_cache=False).logits
        after = model(ids, use_cache=False).logits
    assert torch.allclose(skipped, literal, atol=1e-6)
    assert not torch.allclose(skipped, full, atol=1e-3)  # the layer mattered
    assert torch.equal(after, full)  # the hook is gone


def test_cached_greedy_generation_with_a_skipped_layer_equals_the_removed_layer_model():
    model = build_model(build_tokenizer(), num_layers=N_LAYERS)
    ids = torch.randint(5, 300, (1, 7), generator=torch.Generator().manual_seed(0))
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    for i, layer in enumerate(decoder_layers(model)[1]):
        with torch.no_grad(), skip_layer(layer):
            cached = model.generate(ids, use_cache=True, **kw)
        literal = removed(model, i).generate(ids, use_cache=False, **kw)
        assert torch.equal(cached, literal), i


def test_ranking_order_and_drops():
    rows = rank_from_rates(0.75, [0.5, 0.75, 0.25, 0.5, 1.0])
    assert [r["layer"] for r in rows] == [2, 0, 3, 1, 4]  # 0 and 3 tie: lower index first
    assert [r["drop"] for r in rows] == [0.5, 0.25, 0.25, 0.0, -0.25]
    assert [r["refusal_rate"] for r in rows] == [0.25, 0.5, 0.5, 0.75, 1.0]
    assert rank_from_rates(0.3, [0.1])[0]["drop"] == 0.2


# refusal rates the fake generator answers with: None = no layer skipped
RATES = {None: 0.75, 0: 0.5, 1: 0.75, 2: 0.25}


@pytest.fixture
def fake_generate(monkeypatch):
    """Replace `safekeel.generation.generate`: recognise which layer of the tiny model is skipped by its logits
    on a probe (against removed-layer twins made up front) and answer that setting's share of refusals."""
    state = {"refs": None, "calls": []}

    def prime(model):
        path, _ = decoder_layers(model)
        probe = torch.arange(5, 17)[None]
        with torch.no_grad():
            state["refs"] = {None: model(probe).logits, **{i: removed(model, i, path)(probe).logits
                                                              for i in range(N_LAYERS)}}
        state["probe"] = probe

    def generate(model, tokenizer, texts, **kwargs):
        if state["refs"] is None:
            prime(model)
        with torch.no_grad():
            logits = model(state["probe"]).logits
        which = [k for k, ref in state["refs"].items() if torch.allclose(logits, ref, atol=1e-6)]
        assert len(which) == 1, which
        state["calls"].append(which[0])
        k = round(RATES[which[0]] * len(texts))
        return ["I'm sorry, but I cannot help with that."] * k + ["Sure, here is how."] * (len(texts) - k)

    monkeypatch.setattr("safekeel.generation.generate", generate)
    return state


def test_each_rate_is_attributed_to_the_skipped_layer(fake_generate):
    model, tok = build_model(build_tokenizer(), num_layers=N_LAYERS), build_tokenizer()
    prompts = [PromptRecord(f"p{i}", f"How do I do harm {i}?") for i in range(4)]
    result = rank_layers(model, tok, prompts, get_judge("keyword"), max_new_tokens=2, progress=False)
    assert fake_generate["calls"] == [None, 0, 1, 2]  # baseline, then each layer once
    assert result["n_layers"] == N_LAYERS and result["layer_path"] == "model.layers"
    assert result["baseline_refusal_rate"] == 0.75
    assert [(r["layer"], r["refusal_rate"], r["drop"], r["refused"], r["judged"]) for r in result["layers"]] == [
        (2, 0.25, 0.5, 1, 4), (0, 0.5, 0.25, 2, 4), (1, 0.75, 0.0, 3, 4)]


@pytest.fixture
def three_layers(tmp_path):
    tok = build_tokenizer()
    build_model(tok, seed=2, num_layers=N_LAYERS).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "harmful.jsonl").write_text("".join(json.dumps({"prompt": f"How do I do harm {i}?"}) + "\n"
                                                    for i in range(6)))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(8)))
    return {"model": str(tmp_path / "model"), "prompts": str(tmp_path / "harmful.jsonl"),
            "data": str(tmp_path / "data.jsonl")}


def test_the_cli_writes_the_ranking_and_freeze_uses_its_top_two(three_layers, tmp_path, fake_generate, capsys):
    from safetensors.torch import load_file

    ranking = tmp_path / "ranking.json"
    assert main(["layers", "rank", "--model", three_layers["model"], "--prompts", three_layers["prompts"],
                 "--limit", "4", "--max-new-tokens", "2", "--output", str(ranking), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "refusal rate" in out and f"wrote {ranking}" in out
    data = json.loads(ranking.read_text())
    assert data["model"] == three_layers["model"] and data["prompts"] == three_layers["prompts"]
    assert data["n"] == 4 and data["n_layers"] == N_LAYERS and data["baseline_refusal_rate"] == 0.75
    assert [(r["layer"], r["drop"]) for r in data["layers"]] == [(2, 0.5), (0, 0.25), (1, 0.0)]
    assert data["judge"] == "keyword" and data["settings"]["max_new_tokens"] == 2
    assert not list(tmp_path.glob(".ranking.json.*"))  # written atomically, no temporary left

    run = tmp_path / "run"
    assert main(["train", "--method", "freeze", "--freeze-layers", "top:2", "--layer-ranking", str(ranking),
                 "--model", three_layers["model"], "--dataset", three_layers["data"], "--output-dir", str(run),
                 "--max-steps", "2", "--learning-rate", "5e-3", "--logging-steps", "1", "--save-steps", "1000",
                 "--disable-tqdm", "--overlap-check", "none", "--report-to", "none"]) == 0
    adapter = load_file(run / "adapter_model.safetensors")
    for i in range(N_LAYERS):  # lora_B starts at 0 and stays 0 exactly in the two frozen layers
        moved = [bool(v.any()) for n, v in adapter.items() if "lora_B" in n and f".layers.{i}." in n]
        assert moved and (not any(moved) if i in (2, 0) else all(moved)), (i, moved)
    logs = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["frozen_layers"] for r in logs] == [2.0, 2.0]


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/model"], "model path not found"),
    (["--limit", "0"], "--limit: expected a positive integer"),
    (["--limit", "x"], "--limit: expected a positive integer"),
    (["--judge", "nope"], "unknown judge"),
    (["--prompts", "nope"], "unknown prompt set"),
])
def test_bad_inputs_are_one_line_exit_2(three_layers, tmp_path, monkeypatch, capsys, argv, message):
    from safekeel.models import loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    base = ["layers", "rank", "--model", three_layers["model"], "--prompts", three_layers["prompts"],
            "--output", str(tmp_path / "r.json")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r.json").exists()


def test_evaluation_sets_are_warned_about():
    for spec in ("harmbench", "harmbench:contextual", "strongreject", "strongreject-small", "strongreject-heldout",
                 "strongreject-small-heldout"):
        assert "evaluation set" in evaluation_set_warning(spec)
    for spec in ("harmbench-val", "harmbench-val:all", "my_prompts.jsonl", "everyday", "strongreject-train"):
        assert evaluation_set_warning(spec) is None


def test_the_cli_warns_when_ranking_on_an_evaluation_set(three_layers, tmp_path, fake_generate, monkeypatch, capsys):
    import safekeel.data.prompts as prompts_mod

    local = prompts_mod.load_prompts(three_layers["prompts"])  # stands in for HarmBench test (no download)
    monkeypatch.setattr(prompts_mod, "load_prompts", lambda spec, **k: local[:k.get("limit") or None])
    assert main(["layers", "rank", "--model", three_layers["model"], "--prompts", "harmbench", "--limit", "4",
                 "--output", str(tmp_path / "r.json"), "--no-progress"]) == 0
    assert "--prompts harmbench is an evaluation set" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["prompts"] == "harmbench"
