"""Training-time defences, one module each, behind a registry (docs/defences.md).

`Defence` (base.py) declares the hooks; `registry.py` maps `--method` names to classes and imports a
defence only when it is used. Built-ins: `sft`, `kl`, `pact`.
"""

from safekeel.defences.base import (
    DataPlan,
    Defence,
    DefenceOptions,
    LossTerms,
    NoOptions,
    StepState,
    TrainContext,
)
from safekeel.defences.registry import (
    all_defences,
    build_defence,
    defence_class,
    defence_names,
    register_defence,
    unregister_defence,
)

__all__ = ["DataPlan", "Defence", "DefenceOptions", "LossTerms", "NoOptions", "StepState", "TrainContext",
           "all_defences", "build_defence", "defence_class", "defence_names", "register_defence",
           "unregister_defence"]
