"""`safelora`: Safe LoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when
Fine-tuning Large Language Models", NeurIPS 2024, arXiv:2405.16833; authors' code: IBM/SafeLoRA
`model.py`, also ported to `peft.utils.safelora`).

Training is plain SFT. After it, for each LoRA layer with update ΔW = s · B A (B [out, r], A [r, in]):

    V = W_aligned − W_base,   C = V Vᵀ / ‖V‖_F                 (alignment_subspace.py)
    cos = ⟨C ΔW, ΔW⟩_F / (‖C ΔW‖_F ‖ΔW‖_F)                     (cosine of the flattened matrices)
    if cos ≤ τ:  B ← C B, so the layer's update becomes s · C B A = C ΔW

Layers are chosen as in the authors' code (`select_layers_type`): by count, N least similar (the
authors' default, N = 10: τ is the N-th smallest cosine, so ties at τ are projected too), or by a
cosine threshold τ (their default 0.5). Only B changes, so the saved adapter is an ordinary PEFT adapter
of the same shape. The layers, their cosines and which were projected go to `safelora_projection.json`.

Where this differs from the authors' code: cosines come from r × r Gram matrices instead of the dense
[out, in] products (the same value, without materialising ΔW); C is stored as V with ‖V‖_F for layers
with out > in (the same operator, less memory); cosines are not rounded to 5 decimals (IBM's version
rounds, PEFT's does not); the layers are matched to C by name, not by the order of `named_parameters`;
a layer with V = 0 gets C = 0 (the authors divide 0 by 0) and its cosine is 0; all in float32.
The checkpoints written during training hold the unprojected adapter (training state); the adapter in
--output-dir is projected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.defences.alignment_subspace import (
    AlignmentMatrix,
    build_alignment,
    check_supported,
    lora_factors,
    lora_layers,
    match_layers,
    target_linear_names,
)
from safekeel.defences.base import Defence, DefenceOptions, TrainContext
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

AUTHORS_NUM_LAYERS = 10  # SafeLoRAConfig.num_proj_layers (select_layers_type "number" is their default)
REPORT_FILE = "safelora_projection.json"


@dataclass
class SafeLoRAOptions(DefenceOptions):
    safelora_num_layers: int | None = field(default=None, metadata={
        "help": "project the N LoRA layers whose update is least similar to its projection (None: 10, the "
                "authors' default, unless --safelora-threshold is given)"})
    safelora_threshold: float | None = field(default=None, metadata={
        "help": "instead of a count, project every layer whose cosine similarity is at most this (the "
                "authors' threshold mode uses 0.5)"})

    def finalize(self) -> None:
        if self.safelora_num_layers is not None and self.safelora_threshold is not None:
            raise SafekeelError("give --safelora-num-layers or --safelora-threshold, not both")
        if self.safelora_threshold is not None and not -1.0 <= self.safelora_threshold <= 1.0:
            raise SafekeelError(f"--safelora-threshold is a cosine similarity in [-1, 1], got {self.safelora_threshold}")
        if self.safelora_threshold is None and self.safelora_num_layers is None:
            self.safelora_num_layers = AUTHORS_NUM_LAYERS
        if self.safelora_num_layers is not None and self.safelora_num_layers < 1:
            raise SafekeelError(f"--safelora-num-layers must be >= 1, got {self.safelora_num_layers}")


def projection_cosine(mat: AlignmentMatrix, a, b) -> float:
    """cos(C ΔW, ΔW) of the flattened matrices for ΔW ∝ B A (a [r, in], b [out, r]; the scaling cancels),
    from r × r Grams: ⟨C B A, B A⟩ = Σ (Bᵀ C B) ⊙ (A Aᵀ). 0 when ΔW or C ΔW is 0."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    cb = mat.apply(b).double()  # [out, r]
    b64, gram_a = b.double(), (a.double() @ a.double().T)  # [out, r], [r, r]
    dot = float(((cb.T @ b64) * gram_a).sum())
    norm_proj = float(((cb.T @ cb) * gram_a).sum())
    norm_delta = float(((b64.T @ b64) * gram_a).sum())
    if norm_proj <= 0.0 or norm_delta <= 0.0:
        return 0.0
    return dot / (norm_proj * norm_delta) ** 0.5


def select_layers(cosines: list[float], *, threshold: float | None = None,
                  num_layers: int | None = None) -> tuple[float | None, list[bool]]:
    """(τ used, projected? per layer): cos ≤ τ, with τ the `num_layers`-th smallest cosine when no
    threshold is given (the authors' "number" mode)."""
    if not cosines:
        return threshold, []
    if threshold is None:
        threshold = sorted(cosines)[:num_layers][-1]
    return threshold, [c <= threshold for c in cosines]


def project_lora(model, matrices: dict[str, AlignmentMatrix], *, threshold: float | None = None,
                 num_layers: int | None = None) -> dict:
    """Project the chosen layers of a LoRA model in place (B ← C B) and return the report."""
    import torch

    layers = lora_layers(model)
    names = list(layers)
    cosines = []
    for name in names:
        a, b, _ = lora_factors(layers[name])
        cosines.append(projection_cosine(matrices[name], a, b))
    used, chosen = select_layers(cosines, threshold=threshold, num_layers=num_layers)
    with torch.no_grad():
        for name, pick in zip(names, chosen):
            if pick:  # layers left alone are not touched at all (bit for bit)
                _, b, _ = lora_factors(layers[name])
                b.copy_(matrices[name].apply(b.detach().cpu()).to(b.device, b.dtype))
    return {"select": "threshold" if num_layers is None else "number", "num_layers": num_layers,
            "threshold": used, "projected": sum(chosen), "layers_total": len(names),
            "layers": [{"layer": n, "cosine": c, "projected": p} for n, c, p in zip(names, cosines, chosen)]}


class SafeLoRA(Defence):
    name = "safelora"
    summary = ("after training, replace the LoRA update of the layers least similar to their projection by C ΔW "
               "(C = V Vᵀ/‖V‖_F, V = W_aligned − W_base)")
    paper = "Hsu et al. 2024, Safe LoRA (NeurIPS 2024, arXiv:2405.16833)"
    options_class = SafeLoRAOptions
    supports = ("lora",)
    multi_gpu = "DDP"
    sharded = False  # reads and edits whole layer weights

    def needs(self) -> dict[str, str]:
        return {"base": "the unaligned counterpart of --model: SafeLoRA's V = W_aligned − W_base"}

    def check(self, cfg) -> None:
        super().check(cfg)
        check_supported(cfg, self.name)

    def setup(self, ctx: TrainContext) -> None:
        names = target_linear_names(ctx.model, ctx.config.lora.lora_target_modules)
        # used once, after training: kept in CPU memory, not on the training device
        self.matrices = build_alignment(ctx, names, device="cpu")

    def configure_model(self, model):
        found = lora_layers(model)
        match_layers(found, self.matrices, self.name)
        self.matrices = {n: self.matrices[n] for n in found}  # drop layers PEFT did not adapt
        return model

    def after_train(self, model, ctx: TrainContext) -> None:
        o = self.options
        self.report = project_lora(model, self.matrices, threshold=o.safelora_threshold,
                                   num_layers=o.safelora_num_layers)
        log.info("safelora: projected %d of %d LoRA layers (cosine ≤ %.4g)", self.report["projected"],
                 self.report["layers_total"], self.report["threshold"] if self.report["threshold"] is not None
                 else float("nan"))
        if ctx.output_dir is not None and getattr(ctx.args, "process_index", 0) == 0:
            from safekeel.io_utils import atomic_write_json

            atomic_write_json(Path(ctx.output_dir) / REPORT_FILE, self.report)
