"""Safety-SFT data: make an aligned counterpart of a model that is not safety-aligned.

SmolLM2-135M-Instruct complies with almost every harmful request, so it has no safety tokens of its
own. A short LoRA SFT on harmful prompts paired with refusals gives an aligned counterpart; the
untouched model is its base. Refusals mixed with task rows alone teach a small model to refuse every
request that is not the task, so the recipe also mixes in the original model's own answers to diverse
benign instructions (`helpful_rows`): the counterpart keeps the original's helpfulness and style.
See docs/aligned-counterpart.md for the recipe and its measured refusal and over-refusal rates.

The refusals are written for this project: a few openings, a few reasons and a few offers of safe
help, combined per prompt with a seeded generator so the model sees varied refusals.
"""

from __future__ import annotations

import random

from safekeel.errors import SafekeelError

OPENINGS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot assist with this request.",
    "I can't help with that request.",
    "I cannot provide that information.",
    "I'm sorry, I can't do that.",
    "I won't help with this.",
)
REASONS = (
    "It could cause serious harm to people.",
    "It involves illegal or dangerous activity.",
    "Sharing this could put others at risk.",
    "This request asks for harmful content.",
)
OFFERS = (
    "If you have another question, I'm happy to help.",
    "I can help with a safe, related topic instead.",
    "Let me know if there is something else I can do for you.",
    "",
)


def refusal_text(rng: random.Random) -> str:
    parts = [rng.choice(OPENINGS), rng.choice(REASONS), rng.choice(OFFERS)]
    return " ".join(p for p in parts if p)


def safety_sft_rows(harmful_prompts, benign_rows: list[dict], *, seed: int = 0, refusal_repeats: int = 1) -> list[dict]:
    """Rows {"id", "messages", "harmful", "source"}: each harmful prompt with a refusal, `refusal_repeats`
    times with a fresh refusal text each (flagged `harmful=False`: the answer is safe; `source="refusal"`),
    plus the benign rows (raw prompt/response or normalised), shuffled (seeded)."""
    from safekeel.data.records import normalise_rows

    prompts = [getattr(p, "prompt", p) for p in harmful_prompts]
    if not prompts:
        raise SafekeelError("no harmful prompts to pair with refusals")
    if refusal_repeats < 1:
        raise SafekeelError(f"refusal repeats must be >= 1, got {refusal_repeats}")
    rng = random.Random(seed)
    rows = [{"id": f"refusal-{i}" + (f"#{k + 1}" if k else ""), "harmful": False, "source": "refusal",
             "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": refusal_text(rng)}]}
            for k in range(refusal_repeats) for i, p in enumerate(prompts)]
    if benign_rows:
        rows += [dict(r, harmful=False) for r in normalise_rows(benign_rows, "benign")]
    rng.shuffle(rows)
    return rows


def helpful_rows(model: str, instructions: str, **kwargs) -> tuple[list[dict], dict]:
    """(rows, meta): `model`'s own answers to the benign `instructions` (generated once and cached by
    `safekeel.data.model_answers.make_answers`; refusals and near-empty answers dropped), as benign rows.

    Training the aligned counterpart on the original model's own answers keeps its helpfulness and style:
    without them a short safety SFT teaches a small model to refuse everything that is not the task."""
    from safekeel.data.model_answers import make_answers

    kwargs.setdefault("min_chars", 1)  # "12." is a fine answer to "What is the square root of 144?"
    data = make_answers(model, instructions, harmful=False, **kwargs)
    rows = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"], "source": r["source"],
             "harmful": False} for r in data.rows]
    meta = {k: data.meta.get(k) for k in ("fingerprint", "n_generated", "n_kept", "n_refused", "n_short",
                                          "generation_s", "max_new_tokens")}
    return rows, {**meta, "path": str(data.path), "model": model}


def safety_summary(rows: list[dict]) -> dict:
    """Row counts per source of a safety-SFT set (`refusal`, `<set>-answers`, the task's name)."""
    from collections import Counter

    by_source = Counter(r["source"] for r in rows)
    return {"rows": len(rows), "refusal": by_source.get("refusal", 0), "by_source": dict(by_source)}
