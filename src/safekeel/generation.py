"""Batched greedy generation with left padding (Hugging Face backend).

Prompts are sorted by length so each batch pads little, generated in batches with left padding (so
every row's last prompt token sits at the same column), and returned in the caller's order.
Greedy decoding with left padding gives the same tokens as one prompt at a time (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from safekeel.chat import end_of_turn_ids


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
) -> list[str]:
    """Greedy answers for already-formatted prompt `texts` (see `safekeel.chat.format_prompt`).

    Returns the decoded continuations (special tokens stripped), one per text, in input order.
    """
    from transformers import LogitsProcessorList

    if not texts:
        return []
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = end_of_turn_ids(tokenizer)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    outputs: list[str | None] = [None] * len(texts)
    processors = LogitsProcessorList(list(logits_processors or []))
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos_ids or None,
                logits_processor=processors if len(processors) else None,
            )
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                outputs[i] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
            bar.update(len(idx))
    finally:
        tokenizer.padding_side = old_side
        bar.close()
    return [o or "" for o in outputs]
