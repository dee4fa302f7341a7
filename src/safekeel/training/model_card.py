"""`README.md` model card for a trained adapter or model, in the Hugging Face model-card format.

PEFT's `save_pretrained` writes a blank template ("[More Information Needed]") into the adapter
directory. `train` replaces it, at the end of training, with a card built from `safekeel_run.json`:
what the model is, the method and its options, the safety tokens (the first 20 with their weights),
the training data and its harmful share, the training settings, how to load it, and a citation.
`eval safety` / `eval task` rewrite it when the evaluated adapter (or fully fine-tuned model) is such a
directory, so its "Evaluation results" section shows what results.json now holds: the ASR with its
95% interval always next to over-refusal and task accuracy (or a line saying which of them is not
measured yet, with the command that measures it), never alone.

`build_model_card(run, results)` (training/model_card_text.py) is pure, dicts in, text out;
`write_model_card(dir, results)` here reads the files, checks the results belong to these weights and
writes atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.training.model_card_text import _is_lora, build_model_card

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
RUN_NAME = "safekeel_run.json"

__all__ = ["build_model_card", "read_run", "try_write_model_card", "update_after_eval", "write_model_card"]


# ---- reading ---------------------------------------------------------------------------------------

def read_run(output_dir: str | Path) -> dict:
    """`output_dir/safekeel_run.json`; SafekeelError (one line) when it is missing or unreadable."""
    path = Path(output_dir) / RUN_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SafekeelError(f"{output_dir} is not a safekeel training output (no {RUN_NAME})") from None
    except (OSError, ValueError) as exc:
        raise SafekeelError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SafekeelError(f"{path} is not a safekeel run record")
    return data


def _check_results(output_dir: Path, run: dict, results: dict, source: str) -> None:
    """Refuse results measured on other weights than the ones in `output_dir` (by their fingerprint)."""
    from safekeel.fingerprint import directory_fingerprint

    model = results.get("model") or {}
    if _is_lora(run):
        have, found = directory_fingerprint(output_dir, ("adapter_config.json",)), model.get("adapter_sha256")
    else:
        have, found = directory_fingerprint(output_dir), model.get("sha256")
    if found != have:
        raise SafekeelError(f"{source} was measured on another model than {output_dir} (or on these weights "
                            "before they changed); evaluate this one first")
    trained_on = (run.get("model") or {}).get("sha256")
    if _is_lora(run) and trained_on and model.get("sha256") and model["sha256"] != trained_on:
        raise SafekeelError(f"{source} was measured with the adapter {output_dir} on another base model "
                            f"({model.get('spec')}) than it was trained on")


def write_model_card(output_dir: str | Path, results: dict | str | Path | None = None) -> Path:
    """Write `output_dir/README.md` from its safekeel_run.json and, when given, `results` (a results.json
    dict, file or directory), atomically. Returns the card's path."""
    from safekeel.io_utils import atomic_write_text

    output_dir = Path(output_dir)
    run = read_run(output_dir)
    source = None
    if results is not None and not isinstance(results, dict):
        from safekeel.evaluation.results import load_results, results_path

        source = str(results_path(results).resolve())
        results = load_results(results)
    if results is not None:
        source = source or "results.json"
        _check_results(output_dir, run, results, source)
    text = build_model_card(run, results, output_dir=str(output_dir), results_source=source)
    return atomic_write_text(output_dir / CARD_NAME, text)


def try_write_model_card(output_dir: str | Path, results: dict | str | Path | None = None) -> Path | None:
    """`write_model_card`, but a failure is a warning: a card must never cost a finished training or
    evaluation its exit status."""
    try:
        return write_model_card(output_dir, results)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not write the model card in %s: %s", output_dir, exc)
        return None


def update_after_eval(model: str | None, adapter: str | None, results_dir: str | Path) -> Path | None:
    """After `eval safety` / `eval task`: rewrite the card of the evaluated model when it is a safekeel
    training output we may write to (the adapter when one was given, else the model directory)."""
    target = adapter or model
    if not target:
        return None
    path = Path(target).expanduser()
    if not (path / RUN_NAME).is_file():
        return None  # a hub id, a packaged name, a GGUF file, or a directory safekeel did not train
    if not os.access(path, os.W_OK):
        log.info("not updating the model card of %s: the directory is read-only", path)
        return None
    card = try_write_model_card(path, results_dir)
    if card is not None:
        log.info("updated the model card %s", card)
    return card
