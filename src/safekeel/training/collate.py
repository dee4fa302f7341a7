"""Tokenise chat rows for training and collate them into batches with PACT's two views.

One example = prompt tokens (the chat template with a generation prompt, exactly what generation sees)
followed by answer tokens (the last assistant turn and the template's end-of-turn marker). Prompt and
answer are tokenised separately, so the answer tokens are identical in both views and the prompt tokens
equal inference's. Labels are -100 everywhere except the answer tokens.

The no-prompt view (paper Eq. 6; docs/design.md, "PACT formulas") is the assistant header followed by y_<t, with no BOS and no
system or user turn (as in the authors' `build_post_only_batch`): `header + answer[:P-1]`, so column
H-1+t predicts answer token t, where P = min(A, N + 6τ) (all A without decay, 0 without calibration).

Batches use an "answer frame": tensors [B, A] / [B, A, K] whose column t is answer position t of each
row (A = the longest answer in the batch). `answer_index[b, t]` is the full-view column that predicts
answer token t (prompt_len - 1 + t); `post_index[b, t]` the no-prompt-view column (H - 1 + t).
"""

from __future__ import annotations

import logging

import torch

from safekeel.chat import assistant_header, end_of_turn_ids
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)


def header_ids(tokenizer) -> list[int]:
    """Token ids of the assistant header, no special tokens added (no BOS: the authors' code)."""
    ids = tokenizer(assistant_header(tokenizer), add_special_tokens=False)["input_ids"]
    if not ids:
        raise SafekeelError("the chat template's assistant header tokenises to nothing")
    return list(ids)


def split_prompt_answer(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text, answer text) of a conversation whose last turn is the assistant's answer."""
    if not messages or messages[-1]["role"] != "assistant":
        raise SafekeelError("a training row must end with an assistant turn (the answer that is trained)")
    if not getattr(tokenizer, "chat_template", None):
        raise SafekeelError("the tokenizer has no chat template; training needs one to format prompts")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise SafekeelError("the chat template renders the conversation differently from its prompt "
                            "(the full text does not start with the generation prompt); cannot find the answer span")
    answer = full[len(prompt):]
    stripped = answer.rstrip()
    markers = [m for m in (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>") if m]
    if stripped != answer and stripped.endswith(tuple(markers)):
        answer = stripped  # the newline after the end-of-turn marker is not part of the answer
    return prompt, answer


def encode_rows(tokenizer, rows: list[dict], *, max_length: int, post_positions: int | None) -> tuple[list[dict], dict]:
    """Tokenise normalised rows ({"id", "messages", "harmful"}) -> (examples, summary).

    post_positions: answer positions covered by the no-prompt view (0: no view, None: all).
    Each example: {"id", "input_ids", "prompt_len", "answer_len", "post_ids", "post_len", "harmful"}.
    Answers are cut to fit `max_length`; rows whose prompt leaves no room are dropped (counted)."""
    head = header_ids(tokenizer) if post_positions != 0 else []
    eot = set(end_of_turn_ids(tokenizer))
    examples, seen = [], {}
    dropped = truncated = 0
    for row in rows:
        prompt, answer = split_prompt_answer(tokenizer, row["messages"])
        p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        a_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if (not a_ids or a_ids[-1] not in eot) and tokenizer.eos_token_id is not None:
            a_ids.append(int(tokenizer.eos_token_id))  # the model must learn to stop
        room = max_length - len(p_ids)
        if room < 1:
            dropped += 1
            continue
        if len(a_ids) > room:
            a_ids, truncated = a_ids[:room], truncated + 1
        n_post = len(a_ids) if post_positions is None else min(len(a_ids), post_positions)
        rid = str(row.get("id", len(examples)))
        seen[rid] = seen.get(rid, 0) + 1
        if seen[rid] > 1:  # the reference cache is keyed by id, so ids must be unique
            rid = f"{rid}#{seen[rid]}"
        examples.append({
            "id": rid, "input_ids": p_ids + a_ids, "prompt_len": len(p_ids), "answer_len": len(a_ids),
            "post_ids": (head + a_ids[: n_post - 1]) if n_post else [], "post_len": n_post,
            "harmful": bool(row.get("harmful", False)),
        })
    if not examples:
        raise SafekeelError(f"no training example fits --max-length {max_length} (all {len(rows)} prompts are longer)"
                            if rows else "the training data is empty")
    if dropped or truncated:
        log.warning("%d rows dropped (prompt longer than --max-length %d), %d answers truncated",
                    dropped, max_length, truncated)
    summary = {"examples": len(examples), "dropped_too_long": dropped, "truncated": truncated,
               "harmful": sum(e["harmful"] for e in examples),
               "answer_tokens": sum(e["answer_len"] for e in examples),
               "tokens": sum(len(e["input_ids"]) for e in examples), "header_len": len(head)}
    return examples, summary


class ExampleDataset(torch.utils.data.Dataset):
    """The encoded examples as a map-style dataset (the Trainer shards it per DDP rank)."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class Collator:
    """items -> batch of right-padded tensors (see the module docstring for the answer frame).

    Keys: input_ids, attention_mask, labels [B, L]; shift_labels [B, L-1] (the Trainer counts the loss's
    tokens from it); answer_index, answer_targets, answer_mask [B, A]; harmful [B]; post_input_ids,
    post_attention_mask [B, Lp] and post_index, post_mask [B, A] when any item has a no-prompt view; and
    with a reference `cache`: ref_full [B, A, K], ref_post [B, A, K] (ref_full beyond the view), ref_lse [B, A].
    """

    def __init__(self, pad_id: int, cache=None):
        self.pad_id = int(pad_id)
        self.cache = cache

    def __call__(self, items: list[dict]) -> dict:
        ids = [it["input_ids"] for it in items]
        input_ids = _pad(ids, self.pad_id)
        attention = _pad([[1] * len(s) for s in ids], 0)
        labels = torch.full_like(input_ids, -100)
        a_max = max(it["answer_len"] for it in items)
        answer_index = torch.zeros(len(items), a_max, dtype=torch.long)
        answer_mask = torch.zeros(len(items), a_max, dtype=torch.bool)
        targets = torch.full((len(items), a_max), -100, dtype=torch.long)
        for b, it in enumerate(items):
            p, a = it["prompt_len"], it["answer_len"]
            labels[b, p:p + a] = input_ids[b, p:p + a]
            answer_index[b, :a] = torch.arange(p - 1, p - 1 + a)
            answer_mask[b, :a] = True
            targets[b, :a] = input_ids[b, p:p + a]
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                 "shift_labels": labels[:, 1:].contiguous(), "answer_index": answer_index,
                 "answer_targets": targets, "answer_mask": answer_mask,
                 "harmful": torch.tensor([bool(it["harmful"]) for it in items])}
        if any(it["post_len"] for it in items):
            post = [it["post_ids"] for it in items]
            batch["post_input_ids"] = _pad(post, self.pad_id)
            batch["post_attention_mask"] = _pad([[1] * len(s) for s in post], 0)
            post_index = torch.zeros(len(items), a_max, dtype=torch.long)
            post_mask = torch.zeros(len(items), a_max, dtype=torch.bool)
            for b, it in enumerate(items):
                n = it["post_len"]
                if n:
                    h = len(it["post_ids"]) - (n - 1)  # header length
                    post_index[b, :n] = torch.arange(h - 1, h - 1 + n)
                    post_mask[b, :n] = True
            batch["post_index"], batch["post_mask"] = post_index, post_mask
        if self.cache is not None:
            batch.update(self.cache.batch([it["id"] for it in items], a_max))
        return batch
