"""Per-layer alignment matrices C = V Vᵀ / ‖V‖_F from V = W_aligned − W_base, shared by `safelora`
(Hsu et al. 2024, arXiv:2405.16833) and `asft` (Yang et al. 2025, arXiv:2506.08473).

For each adapted linear layer (weight [out, in]) V is the "alignment direction" the safety training
moved the weights along. Both authors' codes (IBM/SafeLoRA `get_aligned_matrix`,
PKU-YuanGroup/AsFT `SafeLoRA.get_aligned_matrix`) use C = V Vᵀ / ‖V‖_F [out, out], acting on the
update from the left (C ΔW, ΔW [out, in]). The division is by the Frobenius norm, not its square, so C
is not an orthogonal projector: its eigenvalues are σ_i² / ‖V‖_F for V's singular values σ_i. It is one
exactly when all k non-zero σ_i equal √k. (As we read the SafeLoRA paper, it is a cheaper stand-in for
the exact projector V (VᵀV)⁻¹ Vᵀ, which for a full-rank V would be the identity; the paper's text was not
available here to re-check.)

Storage: C [out, out] when out ≤ in, otherwise V [out, in] with ‖V‖_F, applied as V (Vᵀ x) / ‖V‖_F:
whichever is smaller, and never an [out, out] matrix for the wide MLP projections. A layer whose aligned
and base weights are equal (V = 0) gets C = 0, the limit of V Vᵀ / ‖V‖_F as V → 0 (the authors' code
divides 0 by 0 there): every update of that layer counts as orthogonal to the alignment direction.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from safekeel.errors import SafekeelError

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class AlignmentMatrix:
    """C = V Vᵀ / ‖V‖_F of one layer: `c` [out, out] or (`v` [out, in], `norm`); `zero` when V = 0."""

    c: Tensor | None = None
    v: Tensor | None = None
    norm: float = 0.0
    out_features: int = 0

    @property
    def zero(self) -> bool:
        return self.norm == 0.0

    def apply(self, x: Tensor) -> Tensor:
        """C @ x in float32, on x's device: x [out, k] -> [out, k]."""
        import torch

        x = x.float()
        if self.zero:
            return torch.zeros_like(x)
        if self.c is not None:
            return self.c.to(x.device, torch.float32) @ x
        v = self.v.to(x.device, torch.float32)
        return v @ (v.T @ x) / self.norm

    def dense(self) -> Tensor:
        """C [out, out] in float32 (tests and small layers)."""
        import torch

        device = (self.c if self.c is not None else self.v).device if not self.zero else "cpu"
        return self.apply(torch.eye(self.out_features, device=device))


def alignment_matrix(aligned: Tensor, base: Tensor, *, device=None, dtype=None) -> AlignmentMatrix:
    """The layer's C from its aligned and base weights [out, in] (computed in float32 on the weights'
    device, stored on `device` in `dtype`, default float32)."""
    import torch

    if aligned.ndim != 2 or aligned.shape != base.shape:
        raise SafekeelError(f"alignment matrix: expected two [out, in] weights of one shape, got "
                            f"{tuple(aligned.shape)} and {tuple(base.shape)}")
    device = aligned.device if device is None else device
    dtype = torch.float32 if dtype is None else dtype
    v = aligned.detach().float() - base.detach().to(aligned.device).float()  # [out, in]
    out, inp = v.shape
    norm = float(torch.linalg.vector_norm(v))
    if norm == 0.0:
        return AlignmentMatrix(norm=0.0, out_features=out)
    if out <= inp:
        return AlignmentMatrix(c=((v @ v.T) / norm).to(device, dtype), norm=norm, out_features=out)
    return AlignmentMatrix(v=v.to(device, dtype), norm=norm, out_features=out)


# -- which layers: PEFT's matching of --lora-target-modules ------------------------------------------
def target_linear_names(model, targets: str) -> list[str]:
    """Names of the nn.Linear modules of `model` (before LoRA wrapping) that PEFT adapts for
    `targets` ("all-linear", or comma-separated names, each matching a module name or its last
    dotted parts, as `peft.tuners.tuners_utils.check_target_module_exists` does for a list)."""
    import torch

    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if targets.strip() == "all-linear":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return [n for n, m in linear.items() if m is not head]
    keys = [t.strip() for t in targets.split(",") if t.strip()]
    return [n for n in linear if any(n == k or n.endswith("." + k) for k in keys)]


def build_alignment(ctx, names: list[str], *, device, dtype=None) -> dict[str, AlignmentMatrix]:
    """{layer name: C} for the aligned model `ctx.model` (before LoRA) and `--base`, which is loaded
    (`inputs.load_base`), used layer by layer and freed before returning."""
    import torch

    from safekeel.defences.inputs import load_base

    base = load_base(ctx)
    theirs = dict(base.named_modules())
    out, zero = {}, []
    try:
        for name, module in ctx.model.named_modules():
            if name in names:
                out[name] = alignment_matrix(module.weight, theirs[name].weight, device=device, dtype=dtype)
                if out[name].zero:
                    zero.append(name)
    finally:
        ctx.cache.pop("base_model", None)
        del base, theirs
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if zero:
        log.warning("%d layer(s) have equal aligned and base weights (C = 0, the whole update counts as "
                    "off the alignment direction), e.g. %s", len(zero), zero[0])
    return out


def lora_layers(model) -> dict:
    """{name in the unwrapped model: PEFT LoRA layer} of a LoRA-wrapped model (DDP unwrapped first)."""
    import torch

    model = getattr(model, "module", model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {n: m for n, m in inner.named_modules()
            if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and "default" in m.lora_A}


def lora_factors(layer):
    """(A [r, in], B [out, r], scaling) of a LoRA layer's default adapter: ΔW = scaling · B A."""
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight, float(layer.scaling["default"])


def match_layers(found: dict, matrices: dict, method: str) -> None:
    """Refuse, with one line, adapted layers that have no alignment matrix (or a non-linear base)."""
    import torch

    missing = sorted(set(found) - set(matrices))
    if missing:
        raise SafekeelError(f"--method {method}: no alignment matrix for the adapted layer {missing[0]} "
                            f"({len(missing)} such); it needs nn.Linear layers named by --lora-target-modules")
    for name, layer in found.items():
        base_layer = getattr(layer, "base_layer", None)
        if base_layer is not None and not isinstance(base_layer, torch.nn.Linear):
            raise SafekeelError(f"--method {method}: layer {name} is a {type(base_layer).__name__}, not an "
                                "nn.Linear (its [out, in] update is what the alignment matrix acts on)")


def check_supported(cfg, method: str) -> None:
    """QLoRA's 4-bit weights are refused with one line (sharded runs: `Defence.sharded`)."""
    if getattr(cfg.lora, "load_in_4bit", False):
        raise SafekeelError(f"--method {method} needs the aligned weights unquantised (W_aligned − W_base); "
                            "drop --load-in-4bit")
