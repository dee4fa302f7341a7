"""The reference of a `SafetySFTTrainer` run (the model before this training), as `safekeel train` sets it up.

- `before_wrapping`: called before TRL's `SFTTrainer.__init__` (which adds LoRA and patches the model's
  forward with its fused LM head). Builds the one-off cache of the reference's K safety logits
  (training/cache.py) when the defence uses them and `reference` allows it, or, for a live reference with
  full fine-tuning, keeps a frozen copy, taken now because TRL's patched forward would call the
  original model's.
- `live_reference`: called after it: a `SafetyReference` on the frozen copy, or on the PEFT model itself
  (adapters off, so no second copy), checked once against the full forward like `safekeel train` does.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)


@dataclass
class ReferencePlan:
    mode: str  # none | cache | live
    cache: object = None  # a ReferenceCache (mode "cache")
    cache_dir: str | None = None
    frozen: object = None  # a frozen copy of the model (live reference, full fine-tuning)


def place(model, args, quantized: bool) -> torch.device:
    """The device the reference passes run on: the model is moved to `args.device` now (the Trainer would
    move it anyway) unless it is quantised or dispatched with a device map."""
    if args.place_model_on_device and not quantized and not getattr(model, "hf_device_map", None):
        model.to(args.device)
    return next(model.parameters()).device


def before_wrapping(defence, reference: str, *, model, tok, tokens, examples: list[dict], args, device,
                    cache_dir: str | None, full: bool) -> ReferencePlan:
    """Decide cache / live / none for `defence` and `reference` ("auto" | "cache" | "live"); build the cache."""
    from safekeel.training.run import _check_live_reference_is_supported

    kind = defence.reference
    if kind is None:
        return ReferencePlan("none")
    if kind != "safety" and reference == "cache":
        raise SafekeelError(f"defence {defence.name!r} needs the reference's {kind} logits, which are computed "
                            "live (only safety-token logits are cached); use reference='live' or 'auto'")
    if kind == "safety" and reference != "live":
        cache, root = build_cache(model, tok, tokens, examples, args, device, cache_dir, required=reference == "cache")
        if cache is not None:
            return ReferencePlan("cache", cache, root)
    _check_live_reference_is_supported(args, kind)
    # full fine-tuning moves the weights the reference needs: a frozen copy, made before TRL patches forward
    return ReferencePlan("live", frozen=copy.deepcopy(model).requires_grad_(False).eval() if full else None)


def live_reference(plan: ReferencePlan, defence, model, ids, examples: list[dict], pad_id: int, device):
    """The live `SafetyReference` of `plan` (None unless its mode is "live"), as `safekeel train` makes it."""
    if plan.mode != "live":
        return None
    from safekeel.training.run import live_reference as shared

    return shared(defence, plan.frozen if plan.frozen is not None else model, ids, examples, pad_id, device)


def build_cache(model, tok, tokens, examples: list[dict], args, device, root_dir, *, required: bool):
    """(ReferenceCache, its directory) of the reference's K-logits for `examples` (`run.build_reference_cache`,
    as `safekeel train` builds it); (None, None) when `auto` finds it too big for the disk."""
    from safekeel.fingerprint import reference_model_fingerprint
    from safekeel.training.run import build_reference_cache

    cache, root, seconds = build_reference_cache(
        model, tok, tokens, examples, model_fp=reference_model_fingerprint(model), root_dir=root_dir, required=required,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        batch_size=max(1, args.per_device_eval_batch_size), device=device, args=args, progress=not args.disable_tqdm)
    if cache is not None:
        log.info("reference cache %s: %.1f s", root, seconds)
    return cache, root
