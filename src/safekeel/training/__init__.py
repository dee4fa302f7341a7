"""`safekeel train`: SFT, the full-vocabulary KL baseline and PACT on top of the transformers Trainer.

Modules: `config` (options and presets), `collate` (tokenisation, the two views), `reference` (reference
logits on the safety rows only), `cache` (the one-off reference cache), `methods` (the method registry),
`trainer` (the Trainer subclass), `data` (rows and the harmful mix), `run` (`train(config)`).
"""

from safekeel.training.config import (
    PRESETS,
    LoraOptions,
    PactOptions,
    RunConfig,
    TrainingOptions,
    build_config,
)

__all__ = ["PRESETS", "LoraOptions", "PactOptions", "RunConfig", "TrainingOptions", "build_config"]
