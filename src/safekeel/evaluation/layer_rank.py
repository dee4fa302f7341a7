"""`safekeel layers rank`: which decoder layers carry refusals? Skip each one and measure.

For each decoder layer i, the layer is ablated by skipping it: a forward hook replaces its output hidden
states by its input, so the residual stream passes through unchanged, exactly as if the layer were
removed from the stack (the model is not rebuilt; the skipped layer still runs and fills its own KV-cache
slot, which nothing reads back into the stream). Greedy answers to a small harmful prompt set (chat
template, `generation.generate`) are judged (keyword judge by default) and the refusal rate is compared
with the unablated model's:

    drop_i = baseline_refusal_rate − refusal_rate_i

Layers are ranked by drop, largest first (a negative drop: skipping the layer made the model refuse
more); equal drops keep the lower layer index first. Drops are rounded to 12 decimals (0.3 − 0.1 is
stored as 0.2, not 0.19999999999999998). The refusal rate is the share of judged
answers the judge calls safe: for the keyword judge, the answers that open with a refusal. Cost: one
generation pass over the prompts per layer plus one for the baseline.

The prompts default to HarmBench's validation split: the layers chosen here feed training decisions
(`train --method freeze --freeze-layers top:N`), so ranking on an evaluation set (HarmBench test,
StrongREJECT) would leak it into training; `evaluation_set_warning` says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from safekeel.defences.freeze import decoder_layers
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

EVALUATION_SETS = ("harmbench", "strongreject", "strongreject-small", "strongreject-heldout",
                   "strongreject-small-heldout")  # what `eval safety` reports ASR on
TIE_DECIMALS = 12


def evaluation_set_warning(spec: str) -> str | None:
    """A warning line when `spec` names an evaluation prompt set (HarmBench test, StrongREJECT or its held-out
    part), else None (`strongreject-train`, StrongREJECT's training part, is not one)."""
    if str(spec).strip().partition(":")[0].lower() in EVALUATION_SETS:
        return (f"--prompts {spec} is an evaluation set: freezing layers chosen on it leaks the evaluation "
                "prompts into training; rank on harmbench-val (the default) or your own prompts")
    return None


@contextlib.contextmanager
def skip_layer(layer):
    """Within the block, `layer` returns its input hidden states [B, T, H] as its output (tensor outputs,
    and the first element of tuple outputs); the hook is removed on exit, even on an error."""

    def passthrough(module, args, kwargs, output):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            raise RuntimeError(f"cannot skip {type(module).__name__}: no hidden_states input")
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        return hidden

    handle = layer.register_forward_hook(passthrough, with_kwargs=True)
    try:
        yield layer
    finally:
        handle.remove()


def rank_from_rates(baseline: float, rates: Sequence[float]) -> list[dict]:
    """[{"layer", "refusal_rate", "drop"}] for layer i = index into `rates`, sorted by drop descending,
    then by layer index ascending (ties)."""
    rows = [{"layer": i, "refusal_rate": r, "drop": round(baseline - r, TIE_DECIMALS)} for i, r in enumerate(rates)]
    return sorted(rows, key=lambda row: (-row["drop"], row["layer"]))


def judged_refusal_rate(judge, prompts: Sequence[str], answers: Sequence[str]) -> dict:
    """{"refusal_rate", "refused", "judged"}: the share of judged answers (judge errors left out) that the
    judge calls safe; SafekeelError when it judged none."""
    verdicts = judge(list(prompts), list(answers))
    judged = [v for v in verdicts if v.verdict != "error"]
    if not judged:
        raise SafekeelError(f"the judge {getattr(judge, 'id', judge)} returned only errors; no refusal rate")
    refused = sum(v.verdict == "safe" for v in judged)
    return {"refusal_rate": refused / len(judged), "refused": refused, "judged": len(judged)}


def rank_layers(model, tokenizer, prompts: Sequence, judge, *, max_new_tokens: int = 48, batch_size: int = 8,
                system: str | None = None, progress: bool = True,
                on_layer: Callable[[int, dict], None] | None = None) -> dict:
    """Skip each decoder layer in turn and measure the refusal rate on `prompts` (PromptRecords).

    Returns {"n_layers", "layer_path", "baseline_refusal_rate", "baseline": {...counts},
    "layers": [{"layer", "refusal_rate", "drop", "refused", "judged"}] ranked (see `rank_from_rates`)}.
    `on_layer(i, measured)` is called after each layer (progress lines)."""
    from safekeel import generation
    from safekeel.chat import format_prompt

    path, layers = decoder_layers(model)
    texts = [format_prompt(tokenizer, p.prompt, system) for p in prompts]
    asks = [p.prompt for p in prompts]

    def measure(desc: str, warn: bool = False) -> dict:
        answers = generation.generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      progress=progress, desc=desc, warn=warn)
        return judged_refusal_rate(judge, asks, answers)

    was_training = model.training
    model.eval()
    try:
        baseline = measure("no layer skipped", warn=True)  # cut prompts are reported once, here
        log.info("no layer skipped: refusal rate %.3f (%d of %d)", baseline["refusal_rate"], baseline["refused"],
                 baseline["judged"])
        measured = []
        for i, layer in enumerate(layers):
            with skip_layer(layer):
                measured.append(measure(f"layer {i}/{len(layers)} skipped"))
            if on_layer:
                on_layer(i, measured[-1])
    finally:
        model.train(was_training)
    ranked = rank_from_rates(baseline["refusal_rate"], [m["refusal_rate"] for m in measured])
    for row in ranked:
        m = measured[row["layer"]]
        row.update(refused=m["refused"], judged=m["judged"])
    return {"n_layers": len(layers), "layer_path": path, "baseline_refusal_rate": baseline["refusal_rate"],
            "baseline": baseline, "layers": ranked}


def run_layer_rank(model_spec: str, *, adapter: str | None = None, prompts: str = "harmbench-val",
                   prompt_field: str = "prompt", limit: int | None = 32, max_new_tokens: int = 48,
                   batch_size: int = 8, judge=None, system: str | None = None, dtype: str = "auto",
                   device: str = "auto", trust_remote_code: bool = False, output: str | None = None,
                   progress: bool = True) -> dict:
    """Load the prompts and the model, rank its layers and write the ranking JSON atomically to `output`.
    Arguments are assumed checked (the CLI checks them before calling)."""
    from safekeel import __version__
    from safekeel.data.prompts import load_prompts
    from safekeel.io_utils import atomic_write_json
    from safekeel.judges import get_judge
    from safekeel.models.loader import load_model

    judge = judge if judge is not None else get_judge("keyword")
    records = load_prompts(prompts, limit=limit, prompt_field=prompt_field)
    t0 = time.perf_counter()
    model, tok = load_model(model_spec, adapter=adapter, dtype=dtype, device=device,
                            trust_remote_code=trust_remote_code)

    def report(i: int, m: dict) -> None:
        log.info("layer %d skipped: refusal rate %.3f (%d of %d)", i, m["refusal_rate"], m["refused"], m["judged"])

    result = rank_layers(model, tok, records, judge, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         system=system, progress=progress, on_layer=report)
    ranking = {"model": model_spec, "adapter": adapter, "prompts": prompts, "n": len(records), "judge": judge.id,
               **result,
               "settings": {"limit": limit, "prompt_field": prompt_field, "max_new_tokens": max_new_tokens,
                            "batch_size": batch_size, "system": system, "dtype": str(next(model.parameters()).dtype),
                            "ablation": "skip: the layer's output hidden states = its input",
                            "order": "drop descending, ties by layer index ascending",
                            "refusal_rate": "share of judged answers the judge calls safe"},
               "safekeel_version": __version__, "seconds": round(time.perf_counter() - t0, 2)}
    if output:
        atomic_write_json(output, ranking)
    return ranking
