"""Load a model and its tokenizer from a hub id, a local directory, a `.gguf` file or a packaged name.

`load_model` is used everywhere (identify, generate, train, eval), so every command accepts the same
model arguments. dtype "auto" means bf16 on a GPU and fp32 on the CPU; device "auto" means the first
CUDA GPU when there is one. `trust_remote_code` stays off unless the user asks for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: `kind` is packaged | gguf | local | hub."""

    spec: str
    kind: str
    path: str  # directory or hub id passed to from_pretrained
    gguf_file: str | None = None


def resolve_source(spec: str) -> ModelSource:
    if not spec or not str(spec).strip():
        raise SafekeelError("empty model argument")
    spec = str(spec)
    from safekeel.models import packaged
    from safekeel.models.specs import spec_kind

    kind = spec_kind(spec)
    if kind == "memory":
        from safekeel.models.in_memory import lookup, model_name

        return ModelSource(spec, "memory", model_name(lookup(spec)[0]))
    path = Path(spec).expanduser()
    if kind == "packaged":
        gguf = packaged.packaged_model_path(spec)
        return ModelSource(spec, "packaged", str(gguf.parent), gguf.name)
    if kind == "gguf":
        return ModelSource(spec, "gguf", str(path.parent.resolve()), path.name)
    if kind == "local":
        return ModelSource(spec, "local", str(path.resolve()))
    return ModelSource(spec, "hub", spec)


def pick_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SafekeelError(f"bad --device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SafekeelError(f"--device {device} asked for, but no CUDA GPU is available")
    return dev


def pick_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        device = device or pick_device("auto")
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise SafekeelError(f"bad dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def _hub_kwargs(source: ModelSource, trust_remote_code: bool) -> dict:
    kw = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kw["gguf_file"] = source.gguf_file
    return kw


def load_tokenizer(spec: str | ModelSource, *, trust_remote_code: bool = False):
    """The model's tokenizer, set up for batched generation: left padding and a pad token."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_source(spec)
    if source.kind == "memory":
        from safekeel.models.in_memory import lookup

        return lookup(source.spec)[1]
    converted = usable_converted_dir(source)
    try:
        if converted is not None:
            tok = AutoTokenizer.from_pretrained(str(converted))
        else:
            tok = AutoTokenizer.from_pretrained(source.path, **_hub_kwargs(source, trust_remote_code))
    except OSError as exc:
        raise SafekeelError(f"could not load the tokenizer of {source.spec}: {str(exc).splitlines()[0]}") from None
    from safekeel.chat import prepare_tokenizer

    return prepare_tokenizer(tok)


def load_model(
    spec: str,
    *,
    adapter: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    is_trainable: bool = False,
    quantization_config=None,
):
    """Load (model, tokenizer). The model is in eval mode on `device`; an `adapter` (PEFT directory)
    is attached on top (merged into the weights when `merge_adapter`). `quantization_config` (a
    transformers `BitsAndBytesConfig`, QLoRA) loads quantised weights straight onto `device`; a GGUF
    model is converted to safetensors first, as always."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(spec)
    if source.kind == "memory":
        return _in_memory(source, adapter=adapter, device=device, merge_adapter=merge_adapter,
                          is_trainable=is_trainable, quantised=quantization_config is not None)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    converted = usable_converted_dir(source)
    quant = {"quantization_config": quantization_config, "device_map": {"": dev}} if quantization_config else {}
    try:
        if converted is None and source.gguf_file and quant:  # quantise from the converted copy, made now
            full = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype,
                                                        **_hub_kwargs(source, trust_remote_code))
            _save_converted(full, tokenizer, converted_dir(source))
            del full
            converted = usable_converted_dir(source)
        if converted is not None:  # a GGUF converted once to safetensors: seconds instead of a minute
            model = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch_dtype, **quant)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source.path, dtype=torch_dtype, **_hub_kwargs(source, trust_remote_code), **quant
            )
            if source.gguf_file and os.environ.get("SAFEKEEL_NO_CONVERT") != "1":
                _save_converted(model, tokenizer, converted_dir(source))
    except (OSError, ValueError) as exc:
        raise SafekeelError(f"could not load model {source.spec}: {str(exc).splitlines()[0]}") from None
    if adapter:
        model = attach_adapter(model, adapter, is_trainable=is_trainable)
        if merge_adapter:
            model = model.merge_and_unload()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not quant:  # quantised weights were placed by device_map and cannot be moved
        model.to(dev)
    model.eval()
    model.safekeel_source = source  # read by fingerprints
    model.safekeel_adapter = adapter
    return model, tokenizer


def _in_memory(source: ModelSource, *, adapter, device, merge_adapter, is_trainable, quantised):
    """The caller's own loaded model (models/in_memory.py): used as it is (its dtype kept), moved only
    when a device is named, an adapter attached as for any other model."""
    from safekeel.models.in_memory import lookup

    if quantised:
        raise SafekeelError("--load-in-4bit needs a model path: a model passed loaded is used as it is")
    model, tokenizer = lookup(source.spec)
    if adapter:
        model = attach_adapter(model, adapter, is_trainable=is_trainable)
        if merge_adapter:
            model = model.merge_and_unload()
    if device not in (None, "auto"):
        model.to(pick_device(device))
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    model.safekeel_source = source  # read by fingerprints
    model.safekeel_adapter = adapter
    return model, tokenizer


def attach_adapter(model, adapter: str, *, is_trainable: bool = False):
    from peft import PeftModel

    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise SafekeelError(f"adapter not found: {adapter} (expected a PEFT directory with adapter_config.json)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def converted_dir(source: ModelSource) -> Path:
    """Where a GGUF model is kept after its first load, dequantized to float32 safetensors.

    transformers dequantizes a GGUF on every load (16 s for SmolLM2-135M, 40 s for the 0.5B model on
    two CPU cores); the converted copy loads in a few seconds. Keyed by the GGUF's fingerprint, so a
    changed file gets a new copy. Non-GGUF sources return a path that never exists.
    """
    if not source.gguf_file:
        return cache_root() / "converted" / "__none__"
    from safekeel.fingerprint import file_fingerprint

    key = file_fingerprint(Path(source.path) / source.gguf_file)[:16]
    return cache_root() / "converted" / f"{Path(source.gguf_file).stem}-{key}"


MANIFEST = "safekeel_manifest.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_manifest(directory: Path) -> None:
    """Record every file's sha256 (and size/mtime/inode stamp) in `directory/safekeel_manifest.json`."""
    from safekeel.io_utils import atomic_write_json
    from safekeel.wheels import sha256_file

    files = {p.name: {"sha256": sha256_file(p), "stamp": _stamp(p)}
             for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(Path(directory) / MANIFEST, {"files": files})


def manifest_problems(directory: Path) -> list[str]:
    """Files of a directory that differ from its manifest (all of them when there is no readable one).

    A file whose size/mtime/inode stamp is unchanged since it was hashed is trusted without hashing
    again (a full hash of a 2 GB float32 copy costs seconds on every load); any other is hashed."""
    import json

    from safekeel.wheels import sha256_file

    try:
        files = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [MANIFEST]
    if not isinstance(files, dict) or not files:
        return [MANIFEST]
    bad = []
    for name, rec in files.items():
        path = Path(directory) / name
        try:
            if not path.is_file() or list(rec["stamp"]) != _stamp(path) and sha256_file(path) != rec["sha256"]:
                bad.append(name)
        except (KeyError, TypeError):
            bad.append(name)
    return bad


def usable_converted_dir(source: ModelSource) -> Path | None:
    """The converted copy of a GGUF when it is complete and unchanged; a damaged one is removed (and made
    again from the verified GGUF by the load that follows), never loaded."""
    import shutil

    path = converted_dir(source)
    if not path.is_dir():
        return None
    bad = manifest_problems(path)
    if not bad:
        return path
    log.warning("the converted copy of %s at %s is incomplete or changed (%s); converting the GGUF again",
                source.spec, path, ", ".join(bad[:3]))
    shutil.rmtree(path, ignore_errors=True)
    return None


def save_model_dir(model, tokenizer, target: Path) -> Path:
    """Save model + tokenizer as a plain safetensors directory, atomically: written to a temporary
    directory beside `target`, then renamed into place (an empty `target` is replaced). Raises on failure
    and leaves nothing behind."""
    import shutil
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    # transformers marks a GGUF-loaded model as "quantized" and refuses to save it, although its
    # weights are already plain dequantized tensors: drop the marker while saving.
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for attr in ("is_quantized", "quantization_method"):
            if hasattr(model, attr):
                setattr(model, attr, False if attr == "is_quantized" else None)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)  # lets a later load tell a complete, unchanged copy from a damaged one
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if qconfig is not None:
            model.config.quantization_config = qconfig
    return target


def _save_converted(model, tokenizer, target: Path) -> None:
    try:
        save_model_dir(model, tokenizer, target)
    except Exception as exc:  # noqa: BLE001 - caching is an optimisation; loading already worked
        log.warning("could not cache the converted model at %s: %s", target, str(exc).splitlines()[0])


def cache_root() -> Path:
    """safekeel's cache directory (`safekeel.wheels.cache_dir`: ``$SAFEKEEL_CACHE`` or ``~/.cache/safekeel``)."""
    from safekeel.wheels import cache_dir

    return cache_dir()
