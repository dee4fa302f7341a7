"""Record (or recompute) the training loss, logged stats and gradients of each method on a tiny model.

`python tests/golden/record_losses.py` writes `tests/golden/losses.json`; it was run once on the code
before the defence registry (commit f7008ee), and `tests/test_golden_losses.py` compares today's code
against that file. The cases cover every loss path: sft, the full-vocabulary kl, PACT with each
preset, the safety-mass term, the full-scope rung, the live reference (LoRA and full fine-tuning) and
the cache.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

CASES = {
    "sft": {"method": "sft", "tokens": None},
    "kl": {"method": "kl", "tokens": None, "lambda_kl": 0.5},
    "pact-paper-cache": {"method": "pact"},
    "pact-paper-live": {"method": "pact", "reference_cache": "off"},
    "pact-refcode": {"method": "pact", "preset": "reference-code"},
    "pact-mass": {"method": "pact", "safety_mass": True},
    "pact-no-calibration": {"method": "pact", "calibration": False, "weights": False},
    "pact-full-scope": {"method": "pact", "kl_scope": "full", "tokens": None},
    "pact-full-finetune": {"method": "pact", "full": True, "reference_cache": "off"},
    "sft-full-finetune": {"method": "sft", "tokens": None, "full": True},
}


def _perturb(model) -> None:
    """Move the trainable weights off the reference (LoRA B starts at zero, so the KL would be ~0)."""
    g = torch.Generator().manual_seed(0)
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            scale = 0.05 if "lora_B" in name else 0.01 * float(p.detach().float().std().nan_to_num(1.0) + 1e-3)
            p.data.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def measure(setup: dict, root: Path, name: str, overrides: dict) -> dict:
    """{"loss", "stats" {name: [[sum, count] x 3 groups]}, "grad_norms" {param: norm}} for one case."""
    from safekeel.testing import tiny_config
    from safekeel.training.run import prepare

    flat = {"max_steps": 1, "lora_dropout": 0.0, "per_device_train_batch_size": 4, **overrides}
    prep = prepare(tiny_config(setup, root / name, **flat), progress=False)
    trainer = prep.trainer
    model = trainer.model
    _perturb(model)
    model.train()
    batch = {k: v.to(trainer.args.device) for k, v in prep.collator(prep.examples[:4]).items()}
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=batch["answer_mask"].sum())
    loss.backward()
    grads = {n: float(p.grad.double().norm()) for n, p in sorted(model.named_parameters()) if p.grad is not None}
    stats = {k: v.double().tolist() for k, v in sorted(trainer._sums.items())}
    return {"loss": float(loss.detach()), "stats": stats, "grad_norms": grads}


def record_all(root: Path) -> dict:
    from safekeel.testing import tiny_setup

    setup = tiny_setup(root / "setup")
    torch.manual_seed(0)
    return {name: measure(setup, root, name, overrides) for name, overrides in CASES.items()}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        values = record_all(Path(tmp))
    out = Path(__file__).with_name("losses.json")
    out.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {v['loss']:.6g}" for k, v in values.items()))
