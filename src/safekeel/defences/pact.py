"""`pact`: PACT (Wang et al. 2026, arXiv:2603.07445, §3): λ · L_KL^safety on the K safety tokens, with
discrepancy weights, the calibrated reference (gate σ(α(I_ft − I_post − b)) mixing in the no-prompt
view) and its decay after N answer positions. `losses.pact_kl` holds the math (docs/design.md).

Presets (the authors' code is Glresearch1/PACT `finetuning_pact.py`):
- `paper`: Eq. 3-8 literally: T = 1, gate σ(I_ft − I_post), N = τ = 8 (the paper gives none; these are
  the code's), threshold 0.9, λ = 3, K = 50.
- `reference-code`: the authors' training loop: KL on logits / T with T = 2 and a T² factor, gate
  σ(α(I_ft − I_post − b)) with α = 2, b = 0, the dispersion computed at temperature 1, top-p threshold
  0.9, N = 8, τ = 8. Its `lambda_kl` defaults to 0 (off) and its README runs λ = 1; the paper reports
  λ = 3, kept here for both presets.
`--kl-scope full` is Table 5's first rung (the full-vocabulary KL, no weights/calibration/decay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from safekeel.defences.base import Defence, DefenceOptions, LossTerms, StepState, row_sum
from safekeel.errors import SafekeelError

POST_TAU_MULT = 6  # the no-prompt view is computed for the first N + 6τ answer positions (c~ < e^-6 after)


@dataclass
class PactOptions(DefenceOptions):
    """PACT's knobs. `weights`/`calibration`/`decay` None = on for the safety scope, off for the full one."""

    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {"temperature": 1.0, "gate_scale": 1.0, "gate_bias": 0.0, "n": 8, "tau": 8.0, "threshold": 0.9,
                  "lambda_kl": 3.0},
        "reference-code": {"temperature": 2.0, "gate_scale": 2.0, "gate_bias": 0.0, "n": 8, "tau": 8.0,
                           "threshold": 0.9, "lambda_kl": 3.0},
    }
    preset: str = field(default="paper", metadata={
        "choices": ["paper", "reference-code"],
        "help": "paper: Eq. 3-8 (T 1, gate σ(ΔI)); reference-code: the authors' code (T 2, gate σ(2(ΔI − b)))"})
    lambda_kl: float = field(default=3.0, metadata={"help": "weight λ of the KL term", "aliases": ["--lambda"]})
    k: int | None = field(default=None, metadata={"help": "top-K safety tokens of the artifact (None: min(50, its size))"})
    n: int = field(default=8, metadata={"help": "calibration window N: the gate decays after N answer positions"})
    tau: float = field(default=8.0, metadata={"help": "decay constant τ of the gate"})
    threshold: float = field(default=0.9, metadata={"help": "top-p mass of the dispersion I(z)"})
    kl_scope: str = field(default="safety", metadata={
        "choices": ["safety", "full"],
        "help": "safety: KL on the safety tokens (PACT); full: full-vocabulary KL (Table 5, first rung)"})
    weights: bool | None = field(default=None, metadata={
        "help": "weight the reference by the tokens' discrepancy scores (None: on for --kl-scope safety)"})
    calibration: bool | None = field(default=None, metadata={
        "help": "mix in the no-prompt reference view (None: on for --kl-scope safety)"})
    decay: bool | None = field(default=None, metadata={
        "help": "decay the calibration gate after N positions (None: on for --kl-scope safety)"})
    safety_mass: bool = field(default=False, metadata={
        "help": "also hold the total probability on the safety tokens (needs T = 1)"})
    temperature: float = field(default=1.0, metadata={"help": "KL temperature T (the preset sets it)"})
    gate_scale: float = field(default=1.0, metadata={"help": "gate slope α (the preset sets it)"})
    gate_bias: float = field(default=0.0, metadata={"help": "gate bias b"})

    def finalize(self) -> None:
        if self.kl_scope not in ("safety", "full"):
            raise SafekeelError(f"--kl-scope must be full or safety, got {self.kl_scope!r}")
        if self.kl_scope == "full":  # Table 5's first rung: no safety set, so no weights, calibration or decay
            explicit = [n for n in ("weights", "calibration", "decay") if getattr(self, n)]
            if explicit:
                raise SafekeelError(f"--kl-scope full is the plain full-vocabulary KL: --{'/--'.join(explicit)} on "
                                    "does not apply (use --kl-scope safety)")
            if self.safety_mass:
                raise SafekeelError("--safety-mass on needs --kl-scope safety (the full-vocabulary KL holds the "
                                    "mass already)")
            self.weights = self.calibration = self.decay = False
        else:
            self.weights = True if self.weights is None else self.weights
            self.calibration = True if self.calibration is None else self.calibration
            self.decay = True if self.decay is None else self.decay
        if self.safety_mass and self.temperature != 1.0:
            raise SafekeelError(f"--safety-mass on needs temperature 1 (the preset {self.preset} uses "
                                f"{self.temperature}); add --temperature 1")
        for name, low in (("lambda_kl", 0.0), ("temperature", 1e-9), ("threshold", 1e-9)):
            if getattr(self, name) < low:
                flag = "lambda" if name == "lambda_kl" else name
                raise SafekeelError(f"--{flag} must be {'>= 0' if low == 0 else '> 0'}, got {getattr(self, name)}")
        if not 0 < self.threshold <= 1:
            raise SafekeelError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.n < 0 or (self.decay and self.tau <= 0):
            raise SafekeelError(f"--n must be >= 0 and --tau > 0 (got n={self.n}, tau={self.tau})")
        if self.k is not None and self.k <= 0:
            raise SafekeelError(f"--k must be positive, got {self.k}")

    def post_positions(self) -> int | None:
        """How many answer positions the no-prompt view needs: 0 without calibration, None (all) without decay."""
        if self.kl_scope == "full" or not self.calibration:
            return 0
        if not self.decay:
            return None
        return int(self.n + POST_TAU_MULT * self.tau + 0.999999)


class Pact(Defence):
    name = "pact"
    summary = "PACT: hold the aligned model's confidence on K safety tokens at every answer position"
    paper = "Wang et al. 2026, Few Tokens, Big Leverage (arXiv:2603.07445)"
    options_class = PactOptions
    multi_gpu = "DDP; FSDP and DeepSpeed with the reference cache"

    @property
    def reference(self):
        return "full" if self.options.kl_scope == "full" else "safety"

    def needs(self) -> dict[str, str]:
        if self.options.kl_scope == "full":
            return {}
        return {"tokens": "a safety-token file from `safekeel tokens identify`"}

    def post_positions(self) -> int | None:
        return self.options.post_positions()

    def setup(self, ctx) -> None:
        self.weights = None
        if self.options.kl_scope == "full":
            return
        w = ctx.tokens.weights_tensor(ctx.device)
        if self.options.weights and (bool((w < 0).any()) or not bool((w > 0).any())):
            raise SafekeelError("the safety-token weights must be >= 0 with at least one > 0 (or use --weights off)")
        self.weights = w if self.options.weights else None

    def loss(self, step: StepState) -> LossTerms:
        import torch

        from safekeel.defences.kl import full_kl_terms
        from safekeel.losses import pact_kl

        o = self.options
        if o.kl_scope == "full":
            return full_kl_terms(step, o.lambda_kl, o.temperature)
        refs = step.safety_refs(bool(o.safety_mass))
        kl, stats = pact_kl(
            step.ft_k, refs["ref_full"], refs["ref_post"] if o.calibration else None, self.weights, step.mask,
            n=o.n, tau=o.tau, threshold=o.threshold, calibrate=o.calibration, decay=o.decay,
            temperature=o.temperature, gate_scale=o.gate_scale, gate_bias=o.gate_bias, use_weights=o.weights,
            ref_lse=refs.get("ref_lse"), ft_lse=step.ft_lse if "ref_lse" in refs else None,
            safety_mass=o.safety_mass, return_stats=True)
        counts = step.mask.sum(1).to(kl.dtype)
        out = {"kl": (stats["kl_per_row"] * counts, counts)}
        if o.calibration:
            first = step.mask & (torch.arange(step.mask.shape[1], device=step.mask.device) < o.n)
            n_first = first.sum(1).to(kl.dtype)
            out["gate_first_n"] = (stats["gate_first_n_per_row"] * n_first, n_first)
        if "ref_lse" in refs:
            with torch.no_grad():
                mass = (torch.logsumexp(refs["ref_full"].float(), -1) - refs["ref_lse"].float()).clamp(max=0).exp()
            out["safety_mass_ref"] = row_sum(mass, step.mask)
        return LossTerms(extra=o.lambda_kl * kl * step.mask.sum(), stats=out)
