"""Safety-SFT data: make an aligned counterpart of a model that is not safety-aligned.

SmolLM2-135M-Instruct complies with almost every harmful request, so it has no safety tokens of its
own. A short LoRA SFT on harmful prompts paired with refusals, mixed with benign task rows (so the
model does not learn to refuse everything), gives an aligned counterpart; the untouched model is its
base. This is how DESIGN §6 says to get an (aligned, base) pair from the packaged SmolLM2.

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


def safety_sft_rows(harmful_prompts, benign_rows: list[dict], *, seed: int = 0) -> list[dict]:
    """Rows {"id", "messages", "harmful", "source"}: each harmful prompt with a refusal (flagged
    `harmful=False`: the answer is safe; `source="refusal"`), plus the benign rows, shuffled (seeded)."""
    prompts = [getattr(p, "prompt", p) for p in harmful_prompts]
    if not prompts:
        raise SafekeelError("no harmful prompts to pair with refusals")
    rng = random.Random(seed)
    rows = [{"id": f"refusal-{i}", "harmful": False, "source": "refusal",
             "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": refusal_text(rng)}]}
            for i, p in enumerate(prompts)]
    rows += [dict(r, harmful=False) for r in benign_rows]
    rng.shuffle(rows)
    return rows
