"""Intervention analysis (paper §2.2, Table 1): do the safety tokens steer refusals?

Greedy answers are generated under five settings: no intervention; +α on the safety tokens' logits;
safety tokens suppressed (logit → −inf); and the same two interventions on K random tokens (seeded,
excluding the safety tokens and special tokens). Each answer is judged; the table reports the attack
success rate (share judged unsafe) per setting.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from safekeel.chat import format_prompt
from safekeel.generation import TokenBias, generate

SUPPRESS = -1e9


def random_control_tokens(tokenizer, exclude: Sequence[int], k: int, seed: int = 0) -> list[int]:
    """K token ids drawn uniformly from the vocabulary minus `exclude` and special tokens."""
    banned = {int(i) for i in exclude} | set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in banned]
    if len(pool) < k:
        raise ValueError(f"vocabulary too small for {k} random control tokens")
    return sorted(random.Random(seed).sample(pool, k))


def intervention_settings(safety_ids: Sequence[int], random_ids: Sequence[int], alpha: float) -> dict:
    """name -> list of logits processors."""
    return {
        "baseline": [],
        "safety_boost": [TokenBias(safety_ids, alpha)],
        "safety_suppress": [TokenBias(safety_ids, SUPPRESS)],
        "random_boost": [TokenBias(random_ids, alpha)],
        "random_suppress": [TokenBias(random_ids, SUPPRESS)],
    }


def run_interventions(model, tokenizer, prompts, safety_ids, judge, *, alpha: float = 5.0, seed: int = 0,
                      max_new_tokens: int = 64, batch_size: int = 8, system: str | None = None,
                      progress: bool = True) -> tuple[dict, list[dict]]:
    """Returns ({setting: {"asr", "unsafe", "judged", "errors"}}, per-answer rows)."""
    random_ids = random_control_tokens(tokenizer, safety_ids, len(safety_ids), seed)
    texts = [format_prompt(tokenizer, p.prompt, system) for p in prompts]
    table, rows = {}, []
    for name, processors in intervention_settings(safety_ids, random_ids, alpha).items():
        answers = generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           logits_processors=processors, progress=progress, desc=name)
        verdicts = judge([p.prompt for p in prompts], answers)
        unsafe = sum(v.verdict == "unsafe" for v in verdicts)
        errors = sum(v.verdict == "error" for v in verdicts)
        judged = len(verdicts) - errors
        table[name] = {"asr": unsafe / judged if judged else None, "unsafe": unsafe, "judged": judged,
                       "errors": errors}
        rows += [{"setting": name, "id": p.id, "prompt": p.prompt, "response": a, "verdict": v.verdict}
                 for p, a, v in zip(prompts, answers, verdicts)]
    table["_random_token_ids"] = random_ids
    return table, rows
