"""`freeze`: the --freeze-layers parser, which parameters are frozen (against a literal loop over parameter
names, LoRA and full, Llama and GPT-2 layouts), and two training steps through the CLI after which the
frozen layers are bit-for-bit unchanged and the others have moved."""

import json

import pytest
import torch
from safetensors.torch import load_file

from safekeel.cli.main import main
from safekeel.defences.freeze import (
    Freeze,
    FreezeOptions,
    decoder_layers,
    parse_layer_spec,
    read_layer_ranking,
    resolve_layers,
)
from safekeel.errors import SafekeelError
from safekeel.testing import build_model, build_tokenizer, tiny_rows

N_LAYERS = 4


# -- the spec parser --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("0-3,7", [0, 1, 2, 3, 7]),
    ("7", [7]),
    ("-1", [9]),
    ("-3--1", [7, 8, 9]),
    ("2--8", [2]),  # -8 is layer 2
    ("0-2,1,2,0-1", [0, 1, 2]),  # duplicates and overlaps merge
    (" 5 , 1 - 2 ", [1, 2, 5]),
    ("0-9", list(range(10))),
])
def test_the_spec_resolves_indices_and_ranges(spec, expected):
    assert resolve_layers(spec, 10) == expected


@pytest.mark.parametrize("spec, message", [
    ("10", "layer 10 is out of range: the model has 10 decoder layers (0 to 9, or -10 to -1)"),
    ("-11", "layer -11 is out of range: the model has 10 decoder layers"),
    ("3-12", "layer 12 is out of range"),
    ("5-2", "the range 5-2 runs backwards"),
    ("-1-0", "runs backwards"),
])
def test_bad_indices_name_the_layer_count(spec, message):
    with pytest.raises(SafekeelError, match="--freeze-layers") as err:
        resolve_layers(spec, 10)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("spec", ["", "a", "1,,2", "1:3", "top:0", "top:x", "top:1,top:2", "1-2-3", "top"])
def test_unreadable_specs_are_refused_at_build(spec):
    with pytest.raises(SafekeelError, match="--freeze-layers"):
        FreezeOptions.build({"freeze_layers": spec})


def test_the_parsed_spec_keeps_ranges_as_written():
    spec = parse_layer_spec("0-3, -2--1,top:4,7")
    assert spec.ranges == ((0, 3), (-2, -1), (7, 7)) and spec.top == 4
    assert parse_layer_spec("TOP:2").top == 2 and parse_layer_spec("5").ranges == ((5, 5),)


def test_top_n_takes_the_ranking_order_and_combines_with_indices():
    ranking = [5, 2, 7, 0, 1, 3, 4, 6, 8, 9]
    assert resolve_layers("top:3", 10, ranking) == [2, 5, 7]
    assert resolve_layers("top:2,0,5", 10, ranking) == [0, 2, 5]
    with pytest.raises(SafekeelError, match="lists only 10 layers"):
        resolve_layers("top:11", 10, ranking)
    with pytest.raises(SafekeelError, match="needs --layer-ranking"):
        resolve_layers("top:1", 10, None)
    with pytest.raises(SafekeelError, match="needs --layer-ranking FILE"):
        FreezeOptions.build({"freeze_layers": "top:2"})
    with pytest.raises(SafekeelError, match="layer 12 is out of range"):  # a ranking of a bigger model
        resolve_layers("top:1", 10, [12, 1])


def test_a_ranking_file_is_read_in_its_order(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"n_layers": 4, "model": "m", "layers": [
        {"layer": 2, "drop": 0.5}, {"layer": 0, "drop": 0.25}, {"layer": 3, "drop": 0}, {"layer": 1, "drop": -0.1}]}))
    order, n, data = read_layer_ranking(str(path))
    assert order == [2, 0, 3, 1] and n == 4 and data["model"] == "m"
    path.write_text(json.dumps({"layers": [{"layer": 1}, {"layer": 1}]}))
    with pytest.raises(SafekeelError, match="distinct"):
        read_layer_ranking(str(path))
    path.write_text("{not json")
    with pytest.raises(SafekeelError, match="is not a ranking"):
        read_layer_ranking(str(path))
    with pytest.raises(SafekeelError, match="--layer-ranking"):
        read_layer_ranking(str(tmp_path / "missing.json"))


# -- which parameters are frozen, against a literal loop over the names ------------------------------------
def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def _literal_frozen(model, layers, marker="layers"):
    """Names of the parameters that train and sit in one of `layers`, by their names."""
    return {n for n, p in model.named_parameters() if p.requires_grad
            and any(f".{marker}.{i}." in f".{n}" for i in layers)}


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("spec, layers", [("0,2", [0, 2]), ("-1", [3]), ("1-3", [1, 2, 3])])
def test_the_frozen_parameters_are_those_of_the_chosen_layers(mode, spec, layers):
    model = build_model(build_tokenizer(), num_layers=N_LAYERS)
    model = _lora(model) if mode == "lora" else model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = _literal_frozen(model, layers)
    assert expected and expected < trainable
    defence = Freeze(FreezeOptions.build({"freeze_layers": spec}))
    defence.configure_model(model)
    now = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable - now == expected
    assert defence.frozen_layers == layers
    if mode == "lora":
        assert all("lora_" in n for n in expected)
    else:  # every weight of the layer, nothing outside the decoder layers
        assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= now
        assert any(n.endswith(f"layers.{layers[0]}.input_layernorm.weight") for n in expected)
    frozen_numel = sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert defence.frozen_share == pytest.approx(frozen_numel / sum(
        p.numel() for n, p in model.named_parameters() if n in trainable))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gpt2_style_blocks_are_found_under_transformer_h(mode):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=3, n_head=2))
    model = _lora(model) if mode == "lora" else model
    path, layers = decoder_layers(model)
    assert path == "transformer.h" and len(layers) == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = _literal_frozen(model, [1], marker="h")
    Freeze(FreezeOptions.build({"freeze_layers": "1"})).configure_model(model)
    assert trainable - {n for n, p in model.named_parameters() if p.requires_grad} == expected != set()


def test_a_model_without_decoder_layers_is_one_line():
    with pytest.raises(SafekeelError, match="found no decoder layers in Sequential"):
        Freeze().configure_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_freezing_every_lora_parameter_is_refused():
    model = _lora(build_model(build_tokenizer(), num_layers=2))
    with pytest.raises(SafekeelError, match="freezes every trainable parameter .*nothing is left to train"):
        Freeze(FreezeOptions.build({"freeze_layers": "0-1"})).configure_model(model)
    full = build_model(build_tokenizer(), num_layers=2)  # full: embeddings and head still train
    Freeze(FreezeOptions.build({"freeze_layers": "0-1"})).configure_model(full)
    assert {n for n, p in full.named_parameters() if p.requires_grad} == {
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


def test_a_ranking_of_another_depth_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"n_layers": 6, "layers": [{"layer": i} for i in range(6)]}))
    defence = Freeze(FreezeOptions.build({"freeze_layers": "top:1", "layer_ranking": str(path)}))
    with pytest.raises(SafekeelError, match="ranks a model with 6 decoder layers; this model has 4"):
        defence.configure_model(build_model(build_tokenizer(), num_layers=N_LAYERS))


# -- two steps through the CLI -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeze")
    tok = build_tokenizer()
    build_model(tok, seed=3, num_layers=N_LAYERS).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(8)))
    return {"model": str(root / "model"), "data": str(root / "data.jsonl")}


def train_argv(setup, out, *extra):
    return ["train", "--method", "freeze", "--model", setup["model"], "--dataset", setup["data"], "--output-dir",
            str(out), "--max-steps", "2", "--logging-steps", "1", "--save-steps", "1000", "--learning-rate", "5e-3",
            "--per-device-train-batch-size", "2", "--disable-tqdm", "--overlap-check", "none", "--report-to", "none",
            *extra]


def initial_lora(setup, out, spec_args):
    """The LoRA weights training starts from (same seed, same code path), named as in the saved adapter."""
    from peft import get_peft_model_state_dict

    from safekeel.cli.main import build_parser
    from safekeel.cli.train_cmd import flat_options
    from safekeel.training.config import build_config
    from safekeel.training.run import prepare

    cfg = build_config(flat_options(build_parser().parse_args(train_argv(setup, out, *spec_args))))
    model = prepare(cfg, progress=False).trainer.model
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def check_frozen(before: dict, after: dict, frozen: list[int], n_layers: int = N_LAYERS):
    """Each layer's tensors: bit-for-bit equal when frozen, some changed otherwise."""
    assert set(before) == set(after)
    for i in range(n_layers):
        names = [n for n in before if f".layers.{i}." in n]
        assert names
        same = [torch.equal(before[n], after[n]) for n in names]
        if i in frozen:
            assert all(same), (i, [n for n, s in zip(names, same) if not s])
        else:
            assert not all(same), i


def logged(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]


def test_lora_two_steps_leave_the_frozen_layers_unchanged(four_layers, tmp_path):
    out = tmp_path / "run"
    before = initial_lora(four_layers, tmp_path / "probe", ["--freeze-layers", "0,2"])
    assert main(train_argv(four_layers, out, "--freeze-layers", "0,2")) == 0
    after = load_file(out / "adapter_model.safetensors")
    check_frozen(before, after, [0, 2])
    for n in after:  # lora_B starts at 0: a frozen layer's update is exactly zero
        if "lora_B" in n and (".layers.0." in n or ".layers.2." in n):
            assert not after[n].any(), n
    assert [r["frozen_layers"] for r in logged(out)] == [2.0, 2.0]
    assert not any("frozen_layers_harmful" in r for r in logged(out))  # a constant per step, not split by rows


def test_full_two_steps_leave_the_frozen_layers_unchanged(four_layers, tmp_path):
    out = tmp_path / "run"
    assert main(train_argv(four_layers, out, "--full", "--freeze-layers", "-1")) == 0
    before = load_file(f"{four_layers['model']}/model.safetensors")
    after = load_file(out / "model.safetensors")
    check_frozen(before, after, [3])
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    logs = logged(out)
    assert [r["frozen_layers"] for r in logs] == [1.0, 1.0] and 0 < logs[0]["frozen_share"] < 1


def _no_model_load(monkeypatch):
    from safekeel.models import loader

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the error was reported")

    monkeypatch.setattr(loader, "load_model", no_load)


def test_top_n_without_a_ranking_or_with_a_missing_file_is_one_line(four_layers, tmp_path, monkeypatch, capsys):
    _no_model_load(monkeypatch)
    for extra, message in [(["--freeze-layers", "top:2"], "--freeze-layers top:2 needs --layer-ranking FILE"),
                           (["--freeze-layers", "top:2", "--layer-ranking", str(tmp_path / "nope.json")],
                            "--layer-ranking")]:
        assert main(train_argv(four_layers, tmp_path / "out", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "out").exists()


def test_an_out_of_range_layer_is_one_line_naming_the_layer_count(four_layers, tmp_path, capsys):
    assert main(train_argv(four_layers, tmp_path / "out", "--freeze-layers", "1,4")) == 2
    # the model had to load to count its layers: leave out transformers' weight-loading progress bar
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("Loading weights")]
    assert len(err) == 1 and "the model has 4 decoder layers (0 to 3, or -4 to -1)" in err[0], err
