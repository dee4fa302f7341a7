"""The frozen reference model's logits on the K safety tokens, without [B, T, V] logits (docs/design.md, "Making it fast").

- With LoRA the reference is the trained model itself with its adapters disabled (`peft`
  `disable_adapter()`), so there is no second copy; with full fine-tuning it is a frozen copy.
- The reference forward runs the decoder as usual, but a forward pre-hook on the output head keeps the
  last hidden state h [B, T, H] and hands the head a single position, so the [B, T, V] product is never
  formed. The K logits are h at the answer positions times the K rows of the head: F.linear(h, W[S]),
  in the model's dtype like the head itself, then float32 (final-logit soft-capping applied when the
  config has it).
- The full-vocabulary log-sum-exp (for `--safety-mass` and the logged reference mass) is computed over
  vocabulary chunks at the answer positions only, so at most [N, chunk] is held.
- `NaiveReference` does what the authors' code does (full-vocabulary reference forwards, then gather):
  the ground truth for tests and the `naive` benchmark mode.

Every method returns tensors in the answer frame of `safekeel.training.collate`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from safekeel.errors import SafekeelError
from safekeel.losses import gather_frame

_LSE_CHUNK_ELEMENTS = 1 << 24  # [N, chunk] float32 block of the chunked log-sum-exp: 64 MiB


def unwrap(model):
    """The module under DDP/accelerate wrappers (`.module`), unchanged otherwise."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def output_head(model) -> torch.nn.Module:
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise SafekeelError("the model has no output embedding layer (get_output_embeddings() is None)")
    return head


def head_rows(model, ids: Tensor) -> tuple[Tensor, Tensor | None]:
    """(W[S] [K, H], b[S] [K] or None) of the output head; a LoRA-wrapped head gives its frozen base layer."""
    head = output_head(model)
    base = getattr(head, "base_layer", head)
    weight = base.weight
    bias = getattr(base, "bias", None)
    ids = ids.to(weight.device)
    return weight.index_select(0, ids), (bias.index_select(0, ids) if bias is not None else None)


def softcap(z: Tensor, config) -> Tensor:
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(z / cap) * cap if cap else z


class SafetyReference:
    """Reference K-logits (and optionally log-sum-exps) of the two views.

    model: a PEFT model, whose adapters are switched off for the reference (LoRA: no second copy), or a
    plain model that stays unchanged while it is used (a frozen copy for full fine-tuning, or the model
    itself before training starts, for the cache pass). safety_ids: [K] long (None for `kl`).
    """

    def __init__(self, model, safety_ids: Tensor | None):
        self.model = unwrap(model)
        self.ids = safety_ids.long() if safety_ids is not None else None  # None: full_logits only (`kl`)

    # -- running the reference -------------------------------------------------------------------
    @contextlib.contextmanager
    def _reference_mode(self):
        """Eval mode (no dropout) and, with LoRA, adapters off; the training mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter() if is_peft(self.model) else contextlib.nullcontext():
                yield self.model
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden state [B, L, H] (what the head would multiply), with the head fed one position only."""
        captured = {}

        def keep(_module, args):
            captured["h"] = args[0]
            return (args[0][:, -1:, :],) + tuple(args[1:])

        handle = output_head(self.model).register_forward_pre_hook(keep)
        try:
            with self._reference_mode() as m:
                m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        if "h" not in captured:
            raise SafekeelError("the model's forward did not call its output head; cannot project on safety rows")
        return captured["h"]

    @torch.no_grad()
    def project(self, h: Tensor) -> Tensor:
        """h [..., H] -> K-logits [..., K] float32, computed like the head (same dtype, soft-capping)."""
        w, b = head_rows(self.model, self.ids)
        return softcap(F.linear(h.to(w.dtype), w, b).float(), self.model.config)

    @torch.no_grad()
    def log_sum_exp(self, h: Tensor) -> Tensor:
        """Full-vocabulary log-sum-exp of the head's logits: h [N, H] -> [N] float32, over vocabulary chunks."""
        head = output_head(self.model)
        base = getattr(head, "base_layer", head)
        weight, bias = base.weight, getattr(base, "bias", None)
        h = h.to(weight.dtype)
        chunk = max(1, _LSE_CHUNK_ELEMENTS // max(1, h.shape[0]))
        out = torch.full((h.shape[0],), float("-inf"), device=h.device)
        for start in range(0, weight.shape[0], chunk):
            z = F.linear(h, weight[start:start + chunk], None if bias is None else bias[start:start + chunk])
            out = torch.logaddexp(out, torch.logsumexp(softcap(z.float(), self.model.config), -1))
        return out

    def answer_logits(self, input_ids: Tensor, attention_mask: Tensor, index: Tensor, mask: Tensor,
                      need_lse: bool = False) -> tuple[Tensor, Tensor | None]:
        """K-logits [B, A, K] at the answer-frame columns `index` [B, A] (mask [B, A]), and lse [B, A]."""
        h = gather_frame(self.hidden(input_ids, attention_mask), index)  # [B, A, H]
        z = self.project(h)
        lse = None
        if need_lse:
            lse = torch.zeros(mask.shape, device=z.device)
            lse[mask] = self.log_sum_exp(h[mask])
        return z, lse

    def views(self, batch: dict, need_lse: bool = False) -> dict[str, Tensor]:
        """{"ref_full", "ref_post", "ref_lse"}: the answer-frame tensors the cache would give for `batch`."""
        full, lse = self.answer_logits(batch["input_ids"], batch["attention_mask"], batch["answer_index"],
                                       batch["answer_mask"], need_lse)
        post = full
        if "post_input_ids" in batch:
            z_post, _ = self.answer_logits(batch["post_input_ids"], batch["post_attention_mask"], batch["post_index"],
                                           batch["post_mask"])
            post = torch.where(batch["post_mask"].unsqueeze(-1), z_post, full)
        out = {"ref_full": full, "ref_post": post}
        if lse is not None:
            out["ref_lse"] = lse
        return out

    @torch.no_grad()
    def target_logps(self, batch: dict) -> Tensor:
        """log p_ref(y_t | x, y_<t) [B, A] of each answer token (0 off the mask), float32: the target's own
        head row and the chunked log-sum-exp, never [B, A, V] logits (constrained SFT needs these)."""
        mask = batch["answer_mask"]
        h = gather_frame(self.hidden(batch["input_ids"], batch["attention_mask"]), batch["answer_index"])[mask]
        head = output_head(self.model)
        base = getattr(head, "base_layer", head)
        targets = batch["answer_targets"][mask].to(base.weight.device)
        rows = base.weight.index_select(0, targets)  # [N, H]
        z = (h.to(rows.dtype).float() * rows.float()).sum(-1)  # [N]
        bias = getattr(base, "bias", None)
        if bias is not None:
            z = z + bias.index_select(0, targets).float()
        z = softcap(z, self.model.config)
        out = torch.zeros(mask.shape, device=h.device)
        out[mask] = z - self.log_sum_exp(h)
        return out

    @torch.no_grad()
    def full_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The reference's full-vocabulary logits [B, L, V] (the `kl` baseline needs them)."""
        with self._reference_mode() as m:
            return m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def check(self, batch: dict, dtype_tolerance: float | None = None) -> float:
        """Compare the K-row projection with the full forward's logits gathered at S on `batch`; raise if they
        differ (a head with extra scaling the projection does not know). Returns the max abs difference."""
        fast, _ = self.answer_logits(batch["input_ids"], batch["attention_mask"], batch["answer_index"],
                                     batch["answer_mask"])
        full = self.full_logits(batch["input_ids"], batch["attention_mask"])
        slow = gather_frame(full[:, :, self.ids.to(full.device)], batch["answer_index"]).float()
        return _compare(fast, slow, batch["answer_mask"], full.dtype, dtype_tolerance,
                        "the reference's safety-row projection differs from the model's logits",
                        "which the safety-token reference needs; use a defence with a full-vocabulary reference "
                        "(--method kl, or --kl-scope full)")

    def check_targets(self, batch: dict) -> float:
        """Compare `target_logps` with the full forward's log-softmax at the answer tokens; raise if they
        differ. Returns the max abs difference."""
        fast = self.target_logps(batch)
        full = self.full_logits(batch["input_ids"], batch["attention_mask"])
        targets = batch["answer_targets"].clamp(min=0)  # padding is -100
        logp = gather_frame(full.float().log_softmax(-1), batch["answer_index"])  # [B, A, V]
        slow = logp.gather(-1, targets.unsqueeze(-1))[..., 0]
        return _compare(fast, slow, batch["answer_mask"], full.dtype, None,
                        "the reference's answer-token log-probabilities differ from the model's", "")


def _compare(fast: Tensor, slow: Tensor, mask: Tensor, dtype, tolerance: float | None, what: str, advice: str) -> float:
    """Max |fast - slow| over the mask; SafekeelError when it exceeds tolerance · (1 + |slow|) (default
    1e-3 for float32 logits, 0.05 for half precision)."""
    diff = (fast[mask] - slow[mask]).abs()
    tol = tolerance if tolerance is not None else (1e-3 if dtype == torch.float32 else 0.05)
    if bool((diff > tol * (1 + slow[mask].abs())).any()):
        raise SafekeelError(f"{what} by up to {float(diff.max()):.3g}: this model's output head is not a plain "
                            f"linear layer" + (f", {advice}" if advice else ""))
    return float(diff.max()) if diff.numel() else 0.0


class NaiveReference(SafetyReference):
    """The authors' way: full-vocabulary reference forwards for both views, gathered at S afterwards."""

    def answer_logits(self, input_ids, attention_mask, index, mask, need_lse=False):
        logits = gather_frame(self.full_logits(input_ids, attention_mask), index)  # [B, A, V]
        z = logits[..., self.ids.to(logits.device)].float()
        lse = torch.logsumexp(logits.float(), -1) if need_lse else None
        return z, lse
