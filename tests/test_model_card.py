"""The README.md model card of a trained adapter or model (training/model_card.py): built from
safekeel_run.json, rewritten by `eval` with ASR beside over-refusal and accuracy, never ASR alone."""

from __future__ import annotations

import json
import os

import pytest
from huggingface_hub import ModelCard

from safekeel.errors import SafekeelError
from safekeel.training import model_card as mc


def _run(tmp_path, *, full=False, method="pact", base="HuggingFaceTB/SmolLM2-135M-Instruct", k=25, **extra) -> dict:
    run = {
        "safekeel_version": "0.1.0", "status": "done", "global_step": 40, "started": "2026-01-01T00:00:00",
        "finished": "2026-01-01T00:03:00", "wall_seconds": 180.0, "metrics": {"train_loss": 1.25},
        "options": {"method": method, "model": base, "dataset": "arith", "output_dir": str(tmp_path),
                    "harmful": "strongreject-harmful", "poison_ratio": 0.25, "tokens": None,
                    "defence": {"preset": "paper", "lambda_kl": 3.0, "weights": True},
                    "lora": {"full": full, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": "all-linear"},
                    "training": {"learning_rate": 3e-4, "num_train_epochs": 1.0, "seed": 42, "extra": {}}},
        "data": {"rows": 160, "harmful_rows": 40, "sources": {"arith": 120, "strongreject-harmful": 40},
                 "examples": 160, "sha256": "ab" * 32},
        "model": {"spec": base, "kind": "hub", "sha256": "cd" * 32},
        "tokens": {"path": "/gone/tokens.json", "sha256": "ef" * 32, "k": k, "preset": "paper",
                   "ids": list(range(100, 100 + k)), "tokens": [f"tok{i}" for i in range(k)],
                   "weights": [round(1.0 / (i + 1), 4) for i in range(k)]},
        "reference": {"mode": "cache"}, "distributed": {"world_size": 1, "device": "cpu"},
        "versions": {"torch": "2.4", "transformers": "4.46", "peft": "0.13"},
    }
    run.update(extra)
    return run


def _results(**parts) -> dict:
    out = {"updated": "2026-01-02T00:00:00", "model": {}, "benchmarks": {}, "tasks": {}, "probes": {}}
    out.update(parts)
    return out


HARMBENCH = {"harmbench": {"asr": 0.1, "ci95": [0.05, 0.2], "n": 100, "judged": 100, "errors": 0, "judge": "keyword"}}
PROBES = {"over_refusal_everyday": {"rate": 0.02, "k": 3, "n": 135, "ci95": [0.01, 0.06]},
          "over_refusal": {"rate": 0.25, "k": 13, "n": 52, "ci95": [0.15, 0.38]}, "benchmark": "harmbench"}
TASKS = {"arith": {"accuracy": 0.5, "correct": 50, "n": 100, "ci95": [0.4, 0.6]}}


def test_card_front_matter_and_sections(tmp_path):
    text = mc.build_model_card(_run(tmp_path))
    card = ModelCard(text)  # the Hub's own parser reads it back
    assert card.data.library_name == "peft"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"safekeel", "pact", "lora", "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(card.data.tags)
    for heading in ("## Method and options", "## Safety tokens", "## Training data", "## Training settings",
                    "## How to load it", "## Evaluation results", "## Citation"):
        assert heading in text
    # the first 20 safety tokens with their weights, not the 21st
    assert "| 1 | `'tok0'` | 100 | 1 |" in text and "| 20 | `'tok19'` | 119 | 0.05 |" in text
    assert "tok20" not in text
    assert "harmful rows | 40 (25.0%)" in text and "**Warning.**" in text
    assert "| lambda_kl | `3.0` |" in text and "| learning_rate | `0.0003` |" in text
    assert "PeftModel.from_pretrained(base, " in text and "load_model('HuggingFaceTB/SmolLM2-135M-Instruct'" in text
    assert "arxiv.org/abs/2603.07445" in text and "Wang, Guoli and Shi, Haonan and Ouyang, Tu and Wang, An" in text
    assert "[More Information Needed]" not in text


def test_not_evaluated_yet_names_the_commands(tmp_path):
    text = mc.build_model_card(_run(tmp_path))
    assert "Not evaluated yet" in text
    assert f"safekeel eval safety --model HuggingFaceTB/SmolLM2-135M-Instruct --adapter {tmp_path}" in text
    assert "safekeel eval task" in text and "--task arith" in text


def test_full_fine_tune_and_local_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    text = mc.build_model_card(_run(tmp_path, full=True, base=str(base), tokens=None, method="sft",
                                    data={"rows": 10, "harmful_rows": 0}))
    card = ModelCard(text)
    assert card.data.library_name == "transformers"
    assert card.data.base_model is None  # a local path is not Hub metadata
    assert "full-fine-tuning" in card.data.tags
    assert f"AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})" in text and "PeftModel" not in text
    assert "uses no safety tokens" in text and "**Warning.**" not in text
    assert "PACT's" not in text  # sft cites no paper


def test_results_show_asr_beside_over_refusal_and_accuracy(tmp_path):
    text = mc.build_model_card(_run(tmp_path), _results(benchmarks=HARMBENCH, probes=PROBES, tasks=TASKS))
    section = text.split("## Evaluation results")[1].split("## Citation")[0]
    assert "| ASR, harmbench | 10.0% [5.0, 20.0] |" in section
    assert "| over-refusal everyday | 2.0% [1.0, 6.0] | 3 refused of 135 |" in section
    assert "| over-refusal risky | 25.0% [15.0, 38.0] |" in section
    assert "| accuracy, arith | 50.0% [40.0, 60.0] | 50 correct of 100 |" in section
    assert "Not measured yet" not in section and "Not evaluated yet" not in section


def test_asr_alone_says_what_is_missing(tmp_path):
    section = mc.build_model_card(_run(tmp_path), _results(benchmarks=HARMBENCH)).split("## Evaluation results")[1]
    assert "ASR, harmbench" in section
    assert "Not measured yet: over-refusal" in section and "--probes everyday,over-refusal" in section
    assert "Not measured yet: task accuracy" in section and "safekeel eval task" in section
    only_task = mc.build_model_card(_run(tmp_path), _results(tasks=TASKS)).split("## Evaluation results")[1]
    assert "Not measured yet: attack success rate" in only_task


def test_weights_come_from_the_token_file_when_the_run_lacks_them(tmp_path):
    from safekeel.fingerprint import file_fingerprint

    art = tmp_path / "tokens.json"
    art.write_text(json.dumps({"token_ids": [7, 8, 9], "weights": [0.5, 0.3, 0.2], "scores": [3, 2, 1]}))
    run = _run(tmp_path)
    run["tokens"] = {"path": str(art), "sha256": file_fingerprint(art), "k": 2, "ids": [8, 7], "tokens": ["b", "a"],
                     "preset": "paper"}
    text = mc.build_model_card(run)
    assert "| 1 | `'b'` | 8 | 0.3 |" in text and "| 2 | `'a'` | 7 | 0.5 |" in text
    run["tokens"]["sha256"] = "0" * 64  # the file changed since training: its weights are not the trained ones
    assert "| 1 | `'b'` | 8 | n/a |" in mc.build_model_card(run)


def _trained_dir(tmp_path):
    """An output directory as `train` leaves it (LoRA): adapter files, PEFT's blank card, the run record."""
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"r": 8}')
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    (out / "README.md").write_text("# Model Card for Model ID\n[More Information Needed]\n")
    (out / "safekeel_run.json").write_text(json.dumps(_run(out)))
    return out


def test_write_replaces_the_blank_card_atomically(tmp_path):
    out = _trained_dir(tmp_path)
    path = mc.write_model_card(out)
    assert path == out / "README.md"
    text = path.read_text()
    assert "[More Information Needed]" not in text and "## Safety tokens" in text
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                      "safekeel_run.json"]  # no temporary file left


def test_results_of_another_model_are_refused(tmp_path):
    from safekeel.fingerprint import directory_fingerprint

    out = _trained_dir(tmp_path)
    mine = {"sha256": "cd" * 32, "adapter_sha256": directory_fingerprint(out, ("adapter_config.json",))}
    results_dir = tmp_path / "eval"
    results_dir.mkdir()
    (results_dir / "results.json").write_text(json.dumps(_results(model=mine, benchmarks=HARMBENCH, probes=PROBES,
                                                                  tasks=TASKS)))
    text = mc.write_model_card(out, results_dir).read_text()
    assert "| ASR, harmbench | 10.0% [5.0, 20.0] |" in text and str(results_dir / "results.json") in text
    with pytest.raises(SafekeelError, match="another model"):
        mc.write_model_card(out, _results(model={**mine, "adapter_sha256": "1" * 64}))
    with pytest.raises(SafekeelError, match="another base model"):
        mc.write_model_card(out, _results(model={**mine, "sha256": "2" * 64}))
    with pytest.raises(SafekeelError, match="not a safekeel training output"):
        mc.write_model_card(tmp_path / "eval")


def test_update_after_eval_only_touches_safekeel_outputs(tmp_path, monkeypatch, caplog):
    out = _trained_dir(tmp_path)
    assert mc.update_after_eval("HuggingFaceTB/SmolLM2-135M-Instruct", None, tmp_path) is None  # a hub id
    assert mc.update_after_eval(str(tmp_path), None, tmp_path) is None  # a directory safekeel did not train
    monkeypatch.setattr(os, "access", lambda *a: False)  # read-only (root could write anyway)
    assert mc.update_after_eval("base", str(out), tmp_path) is None
    assert "[More Information Needed]" in (out / "README.md").read_text()
    monkeypatch.undo()
    # results that are not this model's: a warning, no exception (the evaluation itself succeeded)
    (tmp_path / "results.json").write_text(json.dumps(_results(model={"adapter_sha256": "x"})))
    with caplog.at_level("WARNING"):
        assert mc.update_after_eval("base", str(out), tmp_path) is None
    assert "could not write the model card" in caplog.text


def test_train_then_eval_task_writes_and_updates_the_card(tmp_path):
    """End to end on a tiny model: `train` replaces PEFT's card, `eval task` adds its accuracy."""
    from safekeel.cli.main import main
    from safekeel.testing import tiny_config, tiny_setup
    from safekeel.training.run import train

    setup = tiny_setup(tmp_path / "setup")
    out = tmp_path / "run"
    train(tiny_config(setup, out, max_steps=1), progress=False)
    text = (out / "README.md").read_text()
    assert ModelCard(text).data.library_name == "peft" and "Not evaluated yet" in text
    run = json.loads((out / "safekeel_run.json").read_text())
    assert len(run["tokens"]["weights"]) == run["tokens"]["k"]  # recorded, so the card never needs the file
    assert main(["eval", "task", "--model", setup["model"], "--adapter", str(out), "--task", "arith", "--limit", "2",
                 "--max-new-tokens", "4", "--output-dir", str(tmp_path / "eval"), "--no-progress"]) == 0
    text = (out / "README.md").read_text()
    assert "| accuracy, arith |" in text and "Not measured yet: attack success rate" in text


def test_a_model_passed_loaded_is_named_as_it_was_loaded(tmp_path):
    """`safekeel.train(model_object, ...)` records `memory:NAME@FP`; the card names NAME (a hub id here, so
    the front matter and the loading snippet name it too), never the in-process spec."""
    spec = "memory:HuggingFaceTB/SmolLM2-135M-Instruct@0123456789ab"
    run = _run(tmp_path, base=spec, model={"spec": spec, "kind": "memory", "sha256": "cd" * 32})
    text = mc.build_model_card(run)
    assert "memory:" not in text
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text
    assert "from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct')" in text
