"""Batched greedy generation with left padding (Hugging Face backend).

Prompts are tokenised once, sorted by length so each batch pads little, generated in batches with left
padding (so every row's last prompt token sits at the same column), and returned in the caller's order.
Greedy decoding with left padding gives the same tokens as one prompt at a time (tested).

A prompt longer than the model can take (its context, `config.max_position_embeddings` or the
tokenizer's `model_max_length`, minus `max_new_tokens`) is never fed as is: past the context the
model's positions are meaningless and its answer would be judged as a normal one. It is cut from the
left, keeping its end, because the end holds the chat template's assistant header and the request
itself; the answers (`Answers`) say which prompts were cut, and one warning line says how many.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from safekeel.chat import end_of_turn_ids
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

_NO_LIMIT = 10**9  # tokenizers without a limit report int(1e30) as model_max_length
_CONFIG_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class Answers(list):
    """The answers (a list of str) plus what was cut: `truncated` maps the index of each prompt that
    was longer than `budget` tokens to its original token count; `cut_off` holds the indices of the
    answers that used all `max_new_tokens` without reaching an end token (None: not known, e.g. an
    injected generator), which a task score must report, since such an answer was stopped, not finished."""

    def __init__(self, items=(), truncated: dict[int, int] | None = None, budget: int | None = None,
                 cut_off: set[int] | None = None):
        super().__init__(items)
        self.truncated = dict(truncated or {})
        self.budget = budget
        self.cut_off = None if cut_off is None else set(cut_off)


def context_length(model, tokenizer) -> int | None:
    """The smallest context the model's config or its tokenizer declares; None when neither does."""
    limits = []
    config = getattr(model, "config", None)
    for name in _CONFIG_LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _NO_LIMIT:
        limits.append(value)
    return min(limits) if limits else None


def prompt_budget(limit: int | None, max_new_tokens: int) -> int | None:
    """Prompt tokens that fit in a `limit`-token context beside `max_new_tokens` answer tokens."""
    if limit is None:
        return None
    if limit <= max_new_tokens:
        raise SafekeelError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's "
                            f"{limit}-token context; lower it")
    return limit - max_new_tokens


def fit_prompts(ids: Sequence[Sequence[int]], budget: int | None) -> tuple[list[list[int]], dict[int, int]]:
    """(ids with each longer than `budget` cut to its last `budget` tokens, {index: original length})."""
    if budget is None:
        return [list(x) for x in ids], {}
    cut = {i: len(x) for i, x in enumerate(ids) if len(x) > budget}
    return [list(x[-budget:]) if i in cut else list(x) for i, x in enumerate(ids)], cut


def truncation_message(n_cut: int, n: int, budget: int | None) -> str:
    """The one warning line about cut prompts."""
    return (f"{n_cut} of {n} prompts are longer than the model's context leaves room for ({budget} tokens "
            "beside --max-new-tokens); kept the end of each (the request and the assistant header)")


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return input_ids, mask


class TokenBias:
    """A logits processor adding `bias` to the logits of `token_ids` (use -1e9 to suppress them).

    scores: [B, V] -> [B, V]. Used by the safety-token intervention analysis (paper §2.2).
    """

    def __init__(self, token_ids: Sequence[int], bias: float):
        self.token_ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        self.bias = float(bias)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        ids = self.token_ids.to(scores.device)
        if self.bias <= -1e8:  # suppression: set, don't add, so the token is never chosen
            scores[:, ids] = torch.finfo(scores.dtype).min
        else:
            scores[:, ids] += self.bias
        return scores


@torch.no_grad()
def generate(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    logits_processors: Sequence | None = None,
    progress: bool = True,
    desc: str = "generating",
    warn: bool = True,
) -> Answers:
    """Greedy answers for already-formatted prompt `texts` (see `safekeel.chat.format_prompt`).

    Returns the decoded continuations (special tokens stripped), one per text, in input order, as an
    `Answers` list that records the prompts cut to fit the context. `warn=False` leaves the warning
    line to the caller (e.g. one line per benchmark instead of one per batch).
    """
    from transformers import LogitsProcessorList

    if not texts:
        return Answers()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = end_of_turn_ids(tokenizer)
    budget = prompt_budget(context_length(model, tokenizer), max_new_tokens)
    ids, cut = fit_prompts(tokenizer(list(texts), add_special_tokens=False)["input_ids"], budget)
    if cut and warn:
        log.warning(truncation_message(len(cut), len(texts), budget))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    outputs: list[str | None] = [None] * len(texts)
    stopped: set[int] = set()  # answers that hit max_new_tokens before an end token
    end_ids = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
    processors = LogitsProcessorList(list(logits_processors or []))
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, mask = _left_pad([ids[i] for i in idx], pad_id)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos_ids or None,
                logits_processor=processors if len(processors) else None,
            )
            new_tokens = out[:, input_ids.shape[1]:]  # [b, T]; finished rows are padded after their end token
            ended = torch.isin(new_tokens, end_ids.to(new_tokens.device)).any(1).tolist() if end_ids.numel() \
                else [False] * len(idx)
            for row, i in enumerate(idx):
                outputs[i] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
                if new_tokens.shape[1] >= max_new_tokens and not ended[row]:
                    stopped.add(i)
            bar.update(len(idx))
    finally:
        bar.close()
    return Answers([o or "" for o in outputs], cut, budget, stopped)
