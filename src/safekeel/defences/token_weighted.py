"""`token_weighted`: token-level safety weighting (the seed article 004, "4. Token-level safety weighting":
"reweight the fine-tuning loss so tokens that fall inside identified safety-critical spans (refusals, ...)
carry higher loss"). No paper or authors' code: the design below is ours.

The safety data (`--safety-data`: harmful prompts with refusals) joins training through a data plan:
optimizer step s trains on the safety rows when s mod k = 0 (k = `--token-weighted-every`), on the
user's data otherwise. On a safety step the per-token cross-entropy of the refusal opening, the
safety-critical span, is multiplied by w (`--token-weighted-weight`), every other token by 1:

    loss_step = (Σ_t w_t · CE_t) / (answer tokens of the step),  w_t = w on the span, 1 elsewhere

The trainer divides by the number of answer tokens, not by Σ w_t, so the weight really raises the
span's share of the gradient (and the safety step's loss): a normalised weighting would cancel it.
With w = 1 this is SFT on the same batches (the user's data with the safety rows mixed in by steps).

The span (`--token-weighted-span`): `sentence` (default), the answer tokens up to and including the one
that ends the first sentence (its text holds . ! ? or a newline after a letter or digit), at most N;
`tokens`, the first N answer tokens. N = `--token-weighted-tokens` (default 32 for sentence, a cap;
5 for tokens). Why the sentence by default: the refusal statement ("I'm sorry, but I can't help with
that.") is what an aligned model says first, and alignment lives in those first tokens (Qi et al. 2024,
arXiv:2406.05946); a fixed N cuts it short or spills into the explanation depending on the model's
phrasing and tokenizer. A "." inside a number or an abbreviation also ends the sentence (rare in refusals).

Why a data plan rather than safety rows inside the user's batches: a micro-batch then comes from one
source, so `step.source == "safety"` marks the rows to weight and the collated batch needs no new per-row
flag; the user's rows are never weighted (their refusals, if any, are not the defence's data). Every
step, safety steps included, counts towards --max-steps; an epoch is the user's data's step count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from safekeel.defences.base import DataPlan, Defence, DefenceOptions, LossTerms, StepState, row_sum
from safekeel.defences.inputs import SAFETY_DATA_HELP, safety_rows
from safekeel.errors import SafekeelError

SPANS = ("sentence", "tokens")
DEFAULT_TOKENS = {"sentence": 32, "tokens": 5}
_TERMINATORS = ".!?\n。！？"


@dataclass
class TokenWeightedOptions(DefenceOptions):
    token_weighted_weight: float = field(default=2.0, metadata={
        "help": "CE weight w of the safety rows' refusal-opening tokens (1: plain SFT on the same batches)"})
    token_weighted_span: str = field(default="sentence", metadata={
        "choices": list(SPANS),
        "help": "sentence: the answer up to the end of its first sentence (at most N tokens); tokens: the first "
                "N answer tokens"})
    token_weighted_tokens: int | None = field(default=None, metadata={
        "help": "N: the span's cap (sentence; None: 32) or length (tokens; None: 5)"})
    token_weighted_every: int = field(default=10, metadata={
        "help": "one optimizer step in this many trains on the safety rows (the first of each group)"})

    def finalize(self) -> None:
        if self.token_weighted_weight < 1:
            raise SafekeelError(f"--token-weighted-weight must be >= 1, got {self.token_weighted_weight}")
        if self.token_weighted_span not in SPANS:
            raise SafekeelError(f"--token-weighted-span must be sentence or tokens, got {self.token_weighted_span!r}")
        if self.token_weighted_tokens is None:
            self.token_weighted_tokens = DEFAULT_TOKENS[self.token_weighted_span]
        if self.token_weighted_tokens < 1:
            raise SafekeelError(f"--token-weighted-tokens must be >= 1, got {self.token_weighted_tokens}")
        if self.token_weighted_every < 2:
            raise SafekeelError(f"--token-weighted-every must be >= 2 (1 would never train the user's data), got "
                                f"{self.token_weighted_every}")


def token_tables(tokenizer):
    """(words [V], ends [V]) bool: each token's text holds a letter or digit / a sentence terminator;
    special tokens hold neither. Indexed by token id (the model's vocabulary may be larger: padded False)."""
    import torch

    size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    words = torch.tensor([i not in special and any(c.isalnum() for c in t) for i, t in enumerate(texts)])
    ends = torch.tensor([i not in special and any(c in _TERMINATORS for c in t) for i, t in enumerate(texts)])
    return words, ends


def span_mask(targets, mask, n: int, words=None, ends=None):
    """[B, A] bool: the safety-critical span of each row, within its answer (`mask`). targets: [B, A] answer
    token ids. Without tables: the first n answer positions. With `words`/`ends` ([V] bool, token_tables):
    positions up to and including the first terminator token at or after the first word token, capped at n."""
    import torch

    positions = torch.arange(mask.shape[1], device=mask.device)
    span = mask & (positions < n)
    if words is None:
        return span
    ids = torch.where(mask, targets, torch.zeros_like(targets)).clamp(min=0, max=words.numel() - 1)
    word, end = words.to(mask.device)[ids] & mask, ends.to(mask.device)[ids] & mask
    stop = end & (word.long().cumsum(1) > 0)  # a terminator once the sentence has started
    after = (stop.long().cumsum(1) - stop.long()) > 0  # strictly after the first stop
    return span & ~after


def span_weights(span, mask, weight: float):
    """[B, A] float: `weight` on the span, 1 on the rest of the answer, 0 off the mask."""
    import torch

    w = 1.0 + (float(weight) - 1.0) * span.float()  # exactly 1 off the span (and everywhere when w = 1)
    return torch.where(mask, w, torch.zeros_like(w))


class TokenWeighted(Defence):
    name = "token_weighted"
    summary = ("token-level safety weighting: the safety rows train every k-th step, the CE of their refusal's "
               "opening weighted by w")
    paper = "- (seed article 004, token-level safety weighting)"
    options_class = TokenWeightedOptions
    optional_inputs: ClassVar[dict[str, str]] = {"safety_data": SAFETY_DATA_HELP}

    def __init__(self, options=None):
        super().__init__(options)
        self.words = self.ends = None

    def setup(self, ctx) -> None:
        if self.options.token_weighted_span == "sentence":
            self.words, self.ends = token_tables(ctx.tokenizer)

    def data_plan(self, ctx) -> DataPlan:
        every = self.options.token_weighted_every
        return DataPlan(sources={"safety": safety_rows(ctx)},
                        schedule=lambda step: "safety" if step % every == 0 else "main")

    def loss(self, step: StepState) -> LossTerms:
        o = self.options
        if step.source == "safety":
            span = span_mask(step.batch["answer_targets"], step.mask, o.token_weighted_tokens, self.words, self.ends)
        else:  # the user's rows: plain CE
            span = step.mask & False
        w = span_weights(span, step.mask, o.token_weighted_weight).to(step.ce.dtype)
        return LossTerms(token_weights=w, stats={"tw_weight": row_sum(w, step.mask),
                                                 "tw_span": row_sum(span.to(step.ce.dtype), step.mask)})
