"""Models the caller already loaded, under a spec string, so every spec-taking path accepts them.

The Python API (`safekeel.train(model=..., ...)`) takes a loaded `transformers` model as well as a
path. Rather than threading objects through training, evaluation and the defences, `register` files
the (model, tokenizer) pair under a spec `memory:<name>@<fingerprint>` that `spec_kind`,
`resolve_source` and `load_model` understand: the rest of safekeel sees one more kind of spec.

The fingerprint is of the weights (config + a sample of parameter values, `fingerprint.weights_digest`),
so the same model passed again in a new process gets the same spec and a run started with it can be
resumed; a changed model gets a new spec and the resume check refuses it. Registered objects are
used as they are, not copied: like PEFT's `get_peft_model`, training adds its LoRA layers to the
model you passed.
"""

from __future__ import annotations

import threading

from safekeel.errors import SafekeelError

PREFIX = "memory:"
_lock = threading.Lock()
_models: dict[str, tuple[object, object]] = {}


def is_memory_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def model_name(model) -> str:
    """The name the model was loaded under (`config._name_or_path`), or its class name."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return str(name).replace("@", "_")


def register(model, tokenizer) -> str:
    """File (model, tokenizer) and return its spec. The tokenizer is set up as `load_tokenizer` sets up
    its own (left padding for batched generation, a pad token), as TRL does with the one it is given."""
    from safekeel.chat import prepare_tokenizer
    from safekeel.fingerprint import weights_digest

    if tokenizer is None:
        raise SafekeelError("a loaded model needs its tokenizer: pass tokenizer=...")
    if not callable(getattr(model, "forward", None)) or not hasattr(model, "config"):
        raise SafekeelError(f"expected a transformers model, got {type(model).__name__}")
    prepare_tokenizer(tokenizer)
    spec = f"{PREFIX}{model_name(model)}@{weights_digest(model)[:12]}"
    with _lock:
        _models[spec] = (model, tokenizer)
    return spec


def lookup(spec: str) -> tuple[object, object]:
    """(model, tokenizer) filed under `spec`; SafekeelError when this process has none."""
    with _lock:
        found = _models.get(spec)
    if found is None:
        raise SafekeelError(f"{spec} names a model passed in memory to another call or process; pass the "
                            "loaded model again (or its path) to use it here")
    return found


def forget(spec: str) -> None:
    """Drop the reference (the caller's object lives on)."""
    with _lock:
        _models.pop(spec, None)
