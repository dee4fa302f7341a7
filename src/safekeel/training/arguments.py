"""transformers `TrainingArguments` for a run: safekeel's training options plus what the two-view
collator needs, with `--report-to` integrations checked before the Trainer would fail on them."""

from __future__ import annotations

import torch

from safekeel.errors import SafekeelError
from safekeel.training.config import RunConfig


def training_arguments(cfg: RunConfig):
    """transformers `TrainingArguments` from the run's training options (safekeel's defaults + given)."""
    from transformers import TrainingArguments

    from safekeel.training.config import NOT_TRAINING_ARGUMENTS

    kwargs = {k: v for k, v in cfg.training.items() if k not in NOT_TRAINING_ARGUMENTS}
    report = kwargs.get("report_to") or "none"
    report = [r.strip() for r in (report.split(",") if isinstance(report, str) else report) if str(r).strip()]
    _check_reporters(report)
    kwargs.update(output_dir=cfg.output_dir, report_to=report or "none", remove_unused_columns=False,
                  label_names=["labels"])
    kwargs.setdefault("use_cpu", not torch.cuda.is_available())
    kwargs.setdefault("ddp_find_unused_parameters", False)
    if kwargs.pop("gradient_checkpointing", False):  # TRL's name; transformers 5 calls it activation checkpointing
        kwargs.update(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SafekeelError(f"bad training arguments: {str(exc).splitlines()[0]}") from None


# --report-to integrations and the package each needs (transformers raises a RuntimeError from deep
# inside the Trainer otherwise, after the model is loaded)
_REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
              "comet_ml": ("comet_ml",), "clearml": ("clearml",), "dvclive": ("dvclive",),
              "neptune": ("neptune",), "codecarbon": ("codecarbon",), "trackio": ("trackio",),
              "swanlab": ("swanlab",), "aim": ("aim",), "azure_ml": ("azureml",), "flyte": ("flytekit",),
              "dagshub": ("dagshub",)}


def _check_reporters(report: list[str]) -> None:
    import importlib.util

    for name in report:
        if name in ("none", "all"):
            continue
        if name not in _REPORTERS:
            raise SafekeelError(f"--report-to: unknown integration {name!r}; use none or one of "
                                f"{', '.join(sorted(_REPORTERS))}")
        if not any(importlib.util.find_spec(m) for m in _REPORTERS[name]):
            extra = ' (or pip install -e ".[tensorboard]")' if name == "tensorboard" else ""
            raise SafekeelError(f"--report-to {name} needs the {_REPORTERS[name][0]} package: "
                                f"pip install {_REPORTERS[name][0]}{extra}")
