"""A tiny, offline training set-up for tests and the benchmark's smoke mode.

`tiny_setup(root)` writes a tiny model directory (safekeel.testing), a safety-token artifact for its
tokenizer and a small chat JSONL (arithmetic-style answers, some rows flagged harmful), and returns
their paths. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

ANSWERS = ["The answer is {a}. First add the numbers.", "I'm sorry, but I cannot help with that request.",
           "Sure, here is how to do it step by step: {a}.", "Tom has {a} apples."]


def tiny_rows(n: int = 8, harmful_every: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        text = ANSWERS[i % len(ANSWERS)].format(a=2 * i + 1)
        rows.append({"id": f"r{i}", "harmful": harmful_every > 0 and i % harmful_every == 0, "source": "tiny",
                     "messages": [{"role": "user", "content": f"What is {i} + {i + 1}? Explain."},
                                  {"role": "assistant", "content": text}]})
    return rows


def tiny_tokens(tokenizer, k: int = 8, preset: str = "paper", ids: list[int] | None = None):
    """A SafetyTokens artifact for `tokenizer`: k ordinary tokens with decreasing positive weights."""
    from safekeel.fingerprint import tokenizer_fingerprint
    from safekeel.tokens.artifact import SafetyTokens

    if ids is None:
        specials = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in specials][40:40 + k]
    scores = [float(k - j) / k for j in range(k)]
    return SafetyTokens(ids, [tokenizer.decode([i]) for i in ids], scores, scores, k, preset,
                        tokenizer_fingerprint(tokenizer), len(tokenizer), {"prompt_set": None})


def tiny_setup(root, *, n_rows: int = 8, k: int = 8, seed: int = 1) -> dict:
    """{"model": dir, "tokens": json, "data": jsonl, "rows": list} under `root`."""
    from safekeel.testing import build_tokenizer, save_tiny

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model_dir = root / "model"
    if not (model_dir / "config.json").is_file():
        save_tiny(model_dir, seed=seed, tokenizer=tok)
    tiny_tokens(tok, k).save(root / "tokens.json")
    rows = tiny_rows(n_rows)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(model_dir), "tokens": str(root / "tokens.json"), "data": str(root / "data.jsonl"), "rows": rows}


def tiny_config(setup: dict, output_dir, **overrides):
    """A validated RunConfig for `setup` (from `tiny_setup`): a few quick steps, no progress bar, the
    reference cache under output_dir, no overlap check; `overrides` are flat option names."""
    from safekeel.training.config import build_config

    flat = {"method": "pact", "model": setup["model"], "dataset": setup["data"], "tokens": setup["tokens"],
            "output_dir": str(output_dir), "max_steps": 4, "logging_steps": 1, "save_steps": 1000,
            "learning_rate": 5e-3, "per_device_train_batch_size": 2, "disable_tqdm": True, "overlap_check": "none",
            "reference_cache_dir": str(Path(output_dir) / "refcache"), "report_to": "none"}
    flat.update(overrides)
    return build_config(flat)
