"""Model-spec resolution and loading (tiny local models; the packaged GGUF path is in the slow tests)."""

import pytest
import torch

from safekeel.errors import SafekeelError
from safekeel.models.loader import load_model, pick_device, pick_dtype, resolve_source


def test_resolve_sources(tiny_dirs, tmp_path):
    assert resolve_source(tiny_dirs["aligned"]).kind == "local"
    assert resolve_source("some-org/some-model").kind == "hub"
    with pytest.raises(SafekeelError, match="model path not found"):
        resolve_source("./nope")
    with pytest.raises(SafekeelError, match="unknown model 'nope'.*smollm2-135m-instruct"):
        resolve_source("nope")
    with pytest.raises(SafekeelError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "x.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SafekeelError, match="not a .gguf"):
        resolve_source(str(tmp_path / "weights.bin"))
    with pytest.raises(SafekeelError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(SafekeelError, match="empty"):
        resolve_source("")


def test_dtype_and_device():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(SafekeelError, match="bad dtype"):
        pick_dtype("int3")
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SafekeelError, match="no CUDA GPU"):
            pick_device("cuda")


def test_load_local_model_and_adapter(tiny_dirs, tmp_path):
    model, tok = load_model(tiny_dirs["aligned"])
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert model.safekeel_source.kind == "local"
    with pytest.raises(SafekeelError, match="adapter not found"):
        load_model(tiny_dirs["aligned"], adapter=str(tmp_path))
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    with_adapter, _ = load_model(tiny_dirs["aligned"], adapter=str(tmp_path / "adapter"))
    assert with_adapter.safekeel_adapter == str(tmp_path / "adapter")
    plain, _ = load_model(tiny_dirs["aligned"])
    x = torch.tensor([[5, 6, 7]])
    # a fresh LoRA adapter starts at zero (B = 0), so outputs are unchanged
    with torch.no_grad():
        assert torch.allclose(with_adapter(x).logits, plain(x).logits, atol=1e-5)


def test_models_merge_cli(tiny_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    from safekeel.cli.main import main

    base, _ = load_model(tiny_dirs["aligned"])
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert main(["models", "merge", "--model", tiny_dirs["aligned"], "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged")]) == 0
    merged, _ = load_model(str(tmp_path / "merged"))
    with_adapter, _ = load_model(tiny_dirs["aligned"], adapter=str(tmp_path / "adapter"))
    plain, _ = load_model(tiny_dirs["aligned"])
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, with_adapter(x).logits, atol=1e-4)
        assert not torch.allclose(merged(x).logits, plain(x).logits, atol=1e-4)  # the adapter did something
    assert main(["models", "merge", "--model", tiny_dirs["aligned"], "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged")]) == 2  # refuses to overwrite


def test_damaged_converted_copy_is_rebuilt(tiny_dirs, tmp_path, monkeypatch):
    """The float32 copy of a GGUF is checked against its manifest on load; a damaged one is remade."""
    from safekeel.models import loader

    model, tok = load_model(tiny_dirs["aligned"])
    src = loader.ModelSource("x.gguf", "gguf", str(tmp_path), "x.gguf")
    (tmp_path / "x.gguf").write_bytes(b"GGUF stand-in")
    target = loader.converted_dir(src)
    loader.save_model_dir(model, tok, target)
    assert loader.usable_converted_dir(src) == target
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # same size, one byte changed, mtime changed
    weights.write_bytes(bytes(data))
    assert loader.manifest_problems(target) == ["model.safetensors"]
    assert loader.usable_converted_dir(src) is None and not target.exists()
    loader.save_model_dir(model, tok, target)
    (target / "safekeel_manifest.json").write_text("{trunc")  # a truncated manifest
    assert loader.usable_converted_dir(src) is None and not target.exists()
