"""`sft`: plain supervised fine-tuning, the cross-entropy on the answer tokens and nothing else."""

from __future__ import annotations

from safekeel.defences.base import Defence


class SFT(Defence):
    name = "sft"
    summary = "plain supervised fine-tuning: cross-entropy on the answer tokens (no defence; the baseline)"
    paper = "-"
