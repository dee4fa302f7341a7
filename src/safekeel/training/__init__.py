"""`safekeel train`: SFT, the full-vocabulary KL baseline and PACT on top of the transformers Trainer.

Modules: `config` (options and presets), `collate` (tokenisation, the two views), `reference` (reference
logits on the safety rows only), `cache` (the one-off, checksummed reference cache), `methods` (the method
registry), `trainer` (the Trainer subclass), `data` (rows and the harmful mix), `guard` (argument checks
before any load; what `--output-dir` may hold, `--overwrite`), `checkpoints` (complete checkpoints and
their options for `--resume`), `run` (`train(config)`, under the output directory's lock).
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
