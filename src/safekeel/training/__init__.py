"""`safekeel train`: fine-tuning with a registered defence (safekeel/defences/) on the transformers Trainer.

Modules: `config` (options, declared once; flags and YAML keys derive from them), `collate` (tokenisation,
the two views), `reference` (reference logits on the safety rows only), `cache` (the one-off, checksummed
reference cache), `loss_step` (CE + the defence's terms, the hooks and the logged stats, shared with
`integrations.trl`), `trainer` (the Trainer subclass built on it), `trl_compat` (TRL's option names),
`monitor` / `monitor_probe` / `rollback` (the safety monitor), `model_card` / `model_card_text` (README.md of
a trained directory), `data_plan` (the batch
sampler of a defence's data plan), `data` (rows and the harmful mix), `guard` (argument checks before any
load; what `--output-dir` may hold, `--overwrite`), `checkpoints` (complete checkpoints and their options
for `--resume`), `run` (`train(config)`, under the output directory's lock).
"""

from safekeel.training.config import LoraOptions, RunConfig, TrainingOptions, build_config

__all__ = ["LoraOptions", "RunConfig", "TrainingOptions", "build_config"]
