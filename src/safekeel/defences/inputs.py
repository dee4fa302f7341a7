"""Inputs several defences share, loaded once per run and kept on the `TrainContext`.

- `safety_rows(ctx)`: the `--safety-data` rows (default: the model's own refusals to HarmBench-val,
  `safekeel.data.safety_data`), harmful prompts with refusals, flagged safe.
- `load_base(ctx)`: the `--base` model (the unaligned counterpart: SafeLoRA's and AsFT's W_aligned −
  W_base), frozen, on the training device, checked to have the aligned model's parameter names and shapes.
- `trainable_parameters(model)`: the parameters the optimizer updates, by name (the LoRA factors, or
  every weight with `--full`).

Call them from `setup(ctx)` (the model is the aligned model, before LoRA wrapping).
"""

from __future__ import annotations

import logging

from safekeel.defences.base import TrainContext
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

SAFETY_DATA_HELP = ("harmful prompts with refusals (--safety-data; default own-refusals: the model's own "
                    "refusals to the HarmBench-val prompts)")


def safety_rows(ctx: TrainContext) -> list[dict]:
    """The run's safety data as chat rows {"id", "messages", "harmful": False, "source"} (loaded once)."""
    if "safety_rows" not in ctx.cache:
        from safekeel.data.safety_data import load_safety_data

        cfg = ctx.config
        progress = not cfg.training.get("disable_tqdm", False)
        rows, meta = load_safety_data(cfg.safety_data, cfg.model, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code, progress=progress,
                                      check_sets=_with_strongreject(cfg.overlap_check))
        log.info("safety data %s: %d rows", meta["spec"], len(rows))
        ctx.cache["safety_rows"], ctx.cache["safety_meta"] = rows, meta
    return ctx.cache["safety_rows"]


def _with_strongreject(sets: str | None) -> str:
    """The run's --overlap-check sets (evaluation prompt sets), plus StrongREJECT when they are the default
    (`safety_data.overlap_sets`, which the harmful rows' check uses too)."""
    from safekeel.data.safety_data import overlap_sets

    return overlap_sets(sets)


def load_base(ctx: TrainContext):
    """The `--base` model: eval mode, no gradients, on `ctx.device`, in the aligned model's dtype."""
    if "base_model" in ctx.cache:
        return ctx.cache["base_model"]
    from safekeel.models.loader import load_model

    cfg = ctx.config
    if not cfg.base:
        raise SafekeelError(f"--method {cfg.method} needs --base (the unaligned counterpart of --model)")
    dtype = next(ctx.model.parameters()).dtype
    base, tok = load_model(cfg.base, dtype=dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
    if len(tok) != len(ctx.tokenizer) or tok.get_vocab() != ctx.tokenizer.get_vocab():
        raise SafekeelError(f"--base {cfg.base} has a different tokenizer from --model {cfg.model}: it must be the "
                            "same architecture before safety alignment")
    mine = {n: tuple(p.shape) for n, p in ctx.model.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in base.named_parameters()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:1]
        raise SafekeelError(f"--base {cfg.base} does not have --model's parameters (names and shapes differ, e.g. "
                            f"{diff[0][0]}): it must be the same architecture before safety alignment")
    base = base.to(ctx.device).requires_grad_(False).eval()
    ctx.cache["base_model"] = base
    return base


def trainable_parameters(model) -> dict:
    """{name: parameter} of the parameters the optimizer updates (LoRA factors, or every weight)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
