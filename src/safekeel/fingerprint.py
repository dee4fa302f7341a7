"""Fingerprints that tie artifacts (safety tokens, caches, results) to the exact model, tokenizer and data.

A fingerprint is a short sha256 hex string. Model weights are fingerprinted cheaply: the sha256 of each
weight file's size, first and last MiB (hashing 500 MB on every run would cost seconds for nothing);
tokenizers by their full vocabulary and special tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CHUNK = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))


def file_fingerprint(path: str | Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_CHUNK))
        if size > 2 * _CHUNK:
            f.seek(size - _CHUNK)
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def directory_fingerprint(path: str | Path, pattern_files: tuple[str, ...] = ("config.json",)) -> str:
    path = Path(path)
    h = hashlib.sha256()
    for name in pattern_files:
        if (path / name).is_file():
            h.update((path / name).read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            h.update(f.name.encode())
            h.update(file_fingerprint(f).encode())
    return h.hexdigest()


def weights_digest(model) -> str:
    """sha256 of a loaded model's config, a sample of its parameter values (first 256 of the first four
    tensors) and the sum and absolute sum of every tensor: one pass over the weights, so two fine-tunes
    of one base that differ only in later layers do not share a fingerprint (nor a reference cache)."""
    import torch

    h = hashlib.sha256(model.config.to_json_string().encode())
    params = list(model.named_parameters())
    for _, p in params[:4]:
        h.update(p.detach().float().cpu().flatten()[:256].numpy().tobytes())
    sums = []
    with torch.no_grad():
        for _, p in params:  # in blocks of 2^24 values: never a float copy of a whole embedding
            blocks = p.detach().reshape(-1).split(1 << 24)
            sums += [sum(float(b.double().sum()) for b in blocks), sum(float(b.double().abs().sum()) for b in blocks)]
    h.update(repr([round(x, 6) for x in sums]).encode())
    h.update(" ".join(name for name, _ in params).encode())
    return h.hexdigest()


def model_fingerprint(model) -> dict:
    """{"spec", "kind", "sha256", "adapter", "adapter_sha256"} for a model from `load_model`."""
    source = getattr(model, "safekeel_source", None)
    adapter = getattr(model, "safekeel_adapter", None)
    info = {"spec": None, "kind": None, "sha256": None, "adapter": adapter, "adapter_sha256": None}
    if source is not None:
        info.update(spec=source.spec, kind=source.kind)
        if source.kind == "memory":  # passed to the Python API loaded (models/in_memory.py)
            info["sha256"] = weights_digest(model)
        elif source.gguf_file:
            info["sha256"] = file_fingerprint(Path(source.path) / source.gguf_file)
        elif source.kind == "local":
            info["sha256"] = directory_fingerprint(source.path)
        else:
            info["sha256"] = sha256_text(source.path + str(getattr(model.config, "_commit_hash", "")))
    else:  # an in-memory model (tests): hash its config and a few parameter values
        info["sha256"] = weights_digest(model)
    if adapter:
        info["adapter_sha256"] = directory_fingerprint(adapter, ("adapter_config.json",))
    return info


def reference_model_fingerprint(model) -> dict:
    """`model_fingerprint` plus what changes the reference's logits without changing the files: the
    parameters' dtype and a 4-bit base. One function for `safekeel train` and the TRL integration, so a
    reference cache built by one is found by the other."""
    return {**model_fingerprint(model), "dtype": str(next(model.parameters()).dtype),
            "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False))}


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(str(t) for t in tokenizer.all_special_tokens)
    return sha256_json({"vocab": vocab, "special": special})
