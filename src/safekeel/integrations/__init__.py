"""Defences inside other libraries' trainers (docs/trl.md).

- `safekeel.integrations.trl.SafetySFTTrainer`: TRL's `SFTTrainer` with a registered defence (PACT by
  default), the same loss as `safekeel train` (`training/loss_step.py`) and the same cached or live
  reference. Importing this package does not import TRL; importing `.trl` does.
"""
