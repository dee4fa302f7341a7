"""`safekeel tokens identify`: find an aligned model's safety tokens (paper §2.1; docs/design.md, "PACT formulas").

1. The aligned model answers each harmful prompt greedily (or the user gives refusal texts).
2. Each answer is judged with the refusal-prefix judge; only refusals are teacher-forced, because the
   paper pairs harmful prompts with *safe* answers and compliant answers would put style tokens into S.
3. Each kept answer is teacher-forced through the aligned model (chat template) and the base model
   (chat template for `paper`; the authors' plain "User: …\\n\\nAssistant: " prompt for
   `reference-code`), Δ accumulated in float64, and the top-K tokens selected.
Answers are teacher-forced as generated, without an appended end-of-turn token (as the authors do).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence

from safekeel import __version__
from safekeel.chat import format_prompt
from safekeel.data.leakage import identification_meta
from safekeel.data.prompts import PromptRecord
from safekeel.errors import SafekeelError
from safekeel.fingerprint import model_fingerprint, tokenizer_fingerprint
from safekeel.generation import generate
from safekeel.judges.keyword import KeywordJudge
from safekeel.tokens.artifact import SafetyTokens
from safekeel.tokens.discrepancy import compute_discrepancy, select_top_k

log = logging.getLogger(__name__)

PRESETS = ("paper", "reference-code")


def check_same_tokenizer(tok_a, tok_b, name_a: str = "aligned", name_b: str = "base") -> None:
    """Refuse two tokenizers that differ in vocabulary size or token→id map."""
    label_a = getattr(tok_a, "name_or_path", "") or name_a
    label_b = getattr(tok_b, "name_or_path", "") or name_b
    if len(tok_a) != len(tok_b):
        raise SafekeelError(f"tokenizers differ: the {name_a} model's tokenizer ({label_a}) has {len(tok_a)} tokens, "
                            f"the {name_b} model's ({label_b}) has {len(tok_b)}")
    if tokenizer_fingerprint(tok_a) != tokenizer_fingerprint(tok_b):
        va, vb = tok_a.get_vocab(), tok_b.get_vocab()
        diff = next((t for t in va if vb.get(t) != va[t]), None)
        raise SafekeelError(f"tokenizers differ: the {name_a} model's tokenizer ({label_a}) and the {name_b} "
                            f"model's ({label_b}) map tokens to different ids (e.g. {diff!r})")


def identify_safety_tokens(
    aligned,
    tokenizer,
    base,
    base_tokenizer,
    prompts: Sequence[PromptRecord | str],
    *,
    k: int = 50,
    preset: str = "paper",
    max_new_tokens: int = 64,
    batch_size: int = 4,
    responses: Sequence[str] | None = None,
    system: str | None = None,
    prompt_set: str = "",
    progress: bool = True,
) -> tuple[SafetyTokens, list[dict]]:
    """Returns the artifact and one row per prompt: id, prompt, response, refusal, kept. `prompts`: records
    or plain strings (filed as `prompt-<i>`)."""
    if preset not in PRESETS:
        raise SafekeelError(f"unknown preset {preset!r}; use {' or '.join(PRESETS)}")
    if not prompts:
        raise SafekeelError("the prompt set is empty")
    prompts = [PromptRecord(f"prompt-{i}", p, source="python") if isinstance(p, str) else p
               for i, p in enumerate(prompts)]
    check_same_tokenizer(tokenizer, base_tokenizer)
    vocab = len(tokenizer)
    out_rows = aligned.get_output_embeddings().weight.shape[0]
    if k <= 0 or k > min(vocab, out_rows):
        raise SafekeelError(f"--k must be between 1 and the vocabulary size ({min(vocab, out_rows)}), got {k}")

    texts = [format_prompt(tokenizer, p.prompt, system) for p in prompts]
    given = responses is not None
    if given:
        if len(responses) != len(prompts):
            raise SafekeelError(f"{len(responses)} responses given for {len(prompts)} prompts")
        answers = list(responses)
        refusals = [True] * len(answers)  # given texts are refusals by the user's word
    else:
        answers = generate(aligned, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           progress=progress, desc="aligned model answers")
        refusals = [j.refused for j in KeywordJudge().judge([p.prompt for p in prompts], answers)]

    answer_ids = [tokenizer(a, add_special_tokens=False).input_ids[:max_new_tokens] for a in answers]
    keep = [i for i in range(len(prompts)) if refusals[i] and answer_ids[i]]
    rows = [{"id": p.id, "prompt": p.prompt, "response": answers[i], "refusal": refusals[i], "kept": i in keep}
            for i, p in enumerate(prompts)]
    if not keep:
        raise SafekeelError(f"none of the aligned model's {len(prompts)} answers is a refusal (refusal-prefix "
                            "judge), so there is nothing to teacher-force; give refusal texts with --responses")
    log.info("teacher-forcing %d of %d answers (%s)", len(keep), len(prompts),
             "given responses" if given else "refusals kept, compliant answers dropped")

    plain_base = preset == "reference-code"
    aligned_ids = [tokenizer(texts[i], add_special_tokens=False).input_ids for i in keep]
    base_texts = [format_prompt(base_tokenizer, prompts[i].prompt, None if plain_base else system, plain=plain_base)
                  for i in keep]
    base_ids = [base_tokenizer(t, add_special_tokens=False).input_ids for t in base_texts]
    aligned_ids, base_ids = _fit_context(aligned_ids, base_ids, [answer_ids[i] for i in keep], aligned, base,
                                         tokenizer, base_tokenizer)
    disc = compute_discrepancy(
        aligned, base, aligned_ids, base_ids, [answer_ids[i] for i in keep],
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        batch_size=batch_size, per_sample=preset == "reference-code", progress=progress,
    )
    ids, scores, weights = select_top_k(disc, k, preset)
    ids_list = [int(i) for i in ids]
    artifact = SafetyTokens(
        token_ids=ids_list,
        tokens=[tokenizer.decode([i]) for i in ids_list],
        scores=[float(s) for s in scores],
        weights=[float(w) for w in weights],
        k=k,
        preset=preset,
        tokenizer_sha256=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab,
        meta={
            "aligned_model": model_fingerprint(aligned),
            "base_model": model_fingerprint(base),
            "prompt_set": prompt_set,
            "n_prompts": len(prompts),
            # which prompts, so evaluations can warn when they score these (docs/leakage.md)
            **identification_meta(prompts),
            "n_kept": len(keep),
            "n_positions": disc.n_positions,
            "responses": "given" if given else "generated",
            "generation": {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "decoding": "greedy",
                           "system_prompt": system},
            "averaging": "per-answer mean" if preset == "reference-code" else "all positions",
            "safekeel_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return artifact, rows


def _fit_context(aligned_ids, base_ids, answers, aligned, base, tokenizer, base_tokenizer):
    """Prompt ids cut from the front so prompt + answer fit both models' contexts (past it a learned
    position table fails and a RoPE model gives logits it was never trained to give); one warning says
    how many were cut."""
    from safekeel.generation import context_length, fit_prompts

    limits = [n for n in (context_length(aligned, tokenizer), context_length(base, base_tokenizer)) if n]
    if not limits:
        return aligned_ids, base_ids
    limit = min(limits)
    longest = max(len(a) for a in answers)
    if limit <= longest:
        raise SafekeelError(f"answers of {longest} tokens leave no room for a prompt in the {limit}-token context; "
                            "lower --max-new-tokens")
    aligned_ids, cut_a = fit_prompts(aligned_ids, limit - longest)
    base_ids, cut_b = fit_prompts(base_ids, limit - longest)
    if cut_a or cut_b:
        log.warning("%d of %d prompts are longer than the %d-token context leaves room for beside the answers; "
                    "kept the end of each", len(set(cut_a) | set(cut_b)), len(aligned_ids), limit)
    return aligned_ids, base_ids

