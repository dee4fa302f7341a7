"""safekeel's Python API: the CLI's jobs as functions (`import safekeel; safekeel.train(...)`).

Each function is a thin layer over the typed function the command line uses (so both give the same
results), taking Python objects as well as paths (`safekeel.api_inputs`):

    tokens = safekeel.identify_tokens(aligned, base, prompts="harmbench-val")      # -> SafetyTokens
    result = safekeel.train(model, dataset, "runs/pact", tokens=tokens, max_steps=100)  # -> TrainResult
    safety = safekeel.evaluate_safety("runs/pact", base_model=model_path, output_dir="runs/pact-eval")
    task = safekeel.evaluate_task("runs/pact", "arith", base_model=model_path, output_dir="runs/pact-eval")
    ok, checks, warnings = safekeel.gate("runs/sft-eval", "runs/pact-eval")

Models: a packaged name, a path, a hub id or a `.gguf` file, or a loaded transformers model (with its
tokenizer); an adapter directory from `train` (`model="runs/pact"`) is read through its run record.
Data: a task name, a file or a hub id, or a `datasets.Dataset` / list of dicts (`messages`, TRL's
prompt/completion, or prompt/response rows). See README, "Python API".
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from safekeel.api_inputs import (
    data_spec_of,
    model_spec_of,
    prompt_records,
    prompt_spec_of,
    results_of,
    tokens_spec_of,
)
from safekeel.errors import SafekeelError
from safekeel.tokens.artifact import SafetyTokens
from safekeel.training.run import TrainResult

__all__ = ["SafetyTokens", "TrainResult", "compare", "evaluate_safety", "evaluate_task", "gate", "identify_tokens",
           "load_tokens", "train"]


def load_tokens(path):
    """The safety-token artifact written by `safekeel tokens identify` / `identify_tokens` (`SafetyTokens`)."""
    from safekeel.tokens.artifact import SafetyTokens

    return SafetyTokens.load(path)


def identify_tokens(aligned, base, prompts="harmbench-val", *, tokenizer=None, base_tokenizer=None, k: int = 50,
                    preset: str = "paper", limit: int | None = None, responses=None, system: str | None = None,
                    max_new_tokens: int = 64, batch_size: int = 4, output=None, dtype: str = "auto",
                    device: str = "auto", progress: bool = True):
    """The K safety tokens of `aligned` against its unaligned `base` (paper §3.1), as a `SafetyTokens`.

    `prompts`: a prompt-set name or file (default HarmBench-val: never the sets `evaluate_safety` scores),
    or a list of strings / dicts / `PromptRecord`s / a Dataset. `responses`: refusal texts to teacher-force
    instead of the aligned model's own answers. `output`: also save the artifact (JSON) there."""
    from safekeel.models.loader import load_model
    from safekeel.tokens.identify import identify_safety_tokens

    records = prompt_records(prompts, "prompts")[:limit]
    if responses is not None:
        responses = [str(r) for r in responses][: len(records)]
    models = []
    for what, m, tok in (("aligned", aligned, tokenizer), ("base", base, base_tokenizer)):
        models += load_model(model_spec_of(m, tok, what), dtype=dtype, device=device)
    artifact, _ = identify_safety_tokens(
        models[0], models[1], models[2], models[3], records, k=k, preset=preset, max_new_tokens=max_new_tokens,
        batch_size=batch_size, responses=responses, system=system,
        prompt_set=prompts if isinstance(prompts, str) else "python", progress=progress)
    if output is not None:
        artifact.save(output)
    return artifact


def train(model, dataset, output_dir, *, method: str = "pact", tokens=None, tokenizer=None, harmful=None,
          safety_data=None, base=None, progress: bool = True, **options):
    """Fine-tune `model` on `dataset` with a defence; returns a `TrainResult` (output_dir, steps, metrics).

    `options`: any `safekeel train` option by its name (`lambda_kl=3`, `max_steps=100`, `learning_rate=2e-4`,
    `lora_r=16`, `num_examples=500`, `poison_ratio=0.1`, any TrainingArguments field, ...). A loaded `model`
    gets its LoRA layers in place (as with PEFT's `get_peft_model`); the adapter is saved in `output_dir`."""
    from safekeel.training.config import build_config
    from safekeel.training.guard import check_arguments
    from safekeel.training.run import train as run_train

    flat = {**options, "method": method, "output_dir": str(output_dir),
            "model": model_spec_of(model, tokenizer, "model"), "dataset": data_spec_of(dataset, "dataset"),
            "tokens": tokens_spec_of(tokens), "harmful": data_spec_of(harmful, "harmful"),
            "safety_data": data_spec_of(safety_data, "safety data"),
            "base": None if base is None else model_spec_of(base, None, "base")}
    cfg = build_config(flat)
    check_arguments(cfg)
    return run_train(cfg, progress=progress)


def _generator(model, tokenizer, adapter, base_model, max_new_tokens: int, batch_size: int | None, backend: str,
               dtype: str, device: str, progress: bool):
    """(generator, model spec, adapter) for `model`: a training output directory holding an adapter is its
    base model + that adapter."""
    from safekeel.generators import LazyGenerator

    if isinstance(model, (str, Path)) and (Path(model) / "adapter_config.json").is_file() and adapter is None:
        adapter, model = str(model), base_model or _recorded_base(Path(model))
    spec = model_spec_of(model, tokenizer, "model")
    adapter = None if adapter is None else str(adapter)
    return LazyGenerator(spec, adapter=adapter, backend=backend, dtype=dtype, device=device,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress), spec, adapter


def _recorded_base(run_dir: Path) -> str:
    """The model an adapter was trained on, from its `safekeel_run.json` (or PEFT's adapter_config)."""
    for name, keys in (("safekeel_run.json", ("options", "model")), ("adapter_config.json", ("base_model_name_or_path",))):
        try:
            value = json.loads((run_dir / name).read_text(encoding="utf-8"))
            for key in keys:
                value = value[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, str) and value and not value.startswith("memory:"):
            return value
    raise SafekeelError(f"{run_dir} holds an adapter but not the model it was trained on: pass base_model=")


def _out_dir(output_dir) -> str:
    return str(output_dir) if output_dir is not None else tempfile.mkdtemp(prefix="safekeel-eval-")


def evaluate_safety(model, *, tokenizer=None, adapter=None, base_model=None, output_dir=None,
                    benchmarks=("harmbench", "strongreject-heldout"), prompts=None, limit: int | None = None,
                    judge="keyword", tokens=None, probes=None, max_new_tokens: int = 256, batch_size: int | None = None, backend: str = "hf",
                    system: str | None = None, dtype: str = "auto", device: str = "auto", overwrite: bool = False,
                    progress: bool = True) -> dict:
    """ASR per benchmark beside over-refusal on benign sets (`eval safety`); returns results.json's content.

    `benchmarks`: set names or files; `prompts`: your own harmful prompts (strings, dicts or a Dataset),
    scored as one more benchmark named `prompts` (pass `benchmarks=()` for only them). `judge`: a
    judge spec or a list (`["keyword", "rubric:MODEL"]`). `output_dir` (default: a new temporary
    directory) keeps the answers, so a second call resumes instead of generating again. Leakage
    (docs/leakage.md): the benchmarks are checked against the identification prompts of `tokens` and
    against what a trained directory's run recorded; overlaps are warned about and listed in
    `benchmarks.<name>.overlap_warnings`."""
    from safekeel.evaluation.probes import parse_probes
    from safekeel.evaluation.safety import SafetyConfig, fitted_prompts, run_safety_eval
    from safekeel.judges.registry import build_judges
    from safekeel.training.model_card import update_after_eval

    benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()] if isinstance(benchmarks, str) \
        else [str(b) for b in benchmarks or ()]
    if prompts is not None:  # the caller's own harmful prompts, filed as benchmark `prompts`
        benchmarks.append(prompt_spec_of(prompts, "prompts"))
    judges = build_judges(judge if isinstance(judge, str) else list(judge), device=device, dtype=dtype)
    generator, spec, adapter = _generator(model, tokenizer, adapter, base_model, max_new_tokens, batch_size,
                                          backend, dtype, device, progress)
    fitted = fitted_prompts(None if tokens is None else tokens_spec_of(tokens), adapter, spec)
    cfg = SafetyConfig(benchmarks, limit=limit, system=system,
                       probes=parse_probes(probes if probes is None or isinstance(probes, str) else ",".join(probes)),
                       overwrite=overwrite, progress=progress, command="safekeel.evaluate_safety",
                       extra={"overlap_checked": [g.label for g in fitted]}, fitted=fitted)
    out = _out_dir(output_dir)
    results = run_safety_eval(generator, judges, out, cfg)
    update_after_eval(spec, adapter, out)  # a trained directory's model card shows the results
    return results


def evaluate_task(model, task: str = "arith", *, tokenizer=None, adapter=None, base_model=None, output_dir=None,
                  split: str = "test", limit: int | None = None, seed: int = 0, max_new_tokens: int | None = None,
                  batch_size: int | None = None, backend: str = "hf", system: str | None = None,
                  dtype: str = "auto", device: str = "auto", overwrite: bool = False, progress: bool = True) -> dict:
    """Task accuracy with answer extraction (`eval task`); returns results.json's content (`tasks.<name>`
    has accuracy, ci95, n, the cut-off share). `max_new_tokens` defaults to the task's own budget."""
    from safekeel.evaluation.task import TaskConfig, resolve_task, run_task_eval
    from safekeel.training.model_card import update_after_eval

    name = task
    task = resolve_task(name)
    generator, spec, adapter = _generator(model, tokenizer, adapter, base_model, max_new_tokens or task.max_new_tokens,
                                          batch_size, backend, dtype, device, progress)
    cfg = TaskConfig(split=split, limit=limit, seed=seed, system=system, overwrite=overwrite, progress=progress,
                     command="safekeel.evaluate_task")
    out = _out_dir(output_dir)
    results = run_task_eval(generator, task, out, cfg, spec=name)
    update_after_eval(spec, adapter, out)
    return results


def gate(baseline, candidate, **rules) -> tuple[bool, list, list[str]]:
    """(passed, checks, warnings): does `candidate` stay within `rules` of `baseline` (`safekeel gate`)?

    Each side is a results file or directory, or the dict `evaluate_*` returned. `rules`: the gate's
    options by name (`max_asr_increase=0.02`, `min_accuracy_retained=0.9`, `max_over_refusal_increase`, ...)."""
    from safekeel.evaluation.gate import run_gate

    checks, warnings = run_gate(results_of(baseline, "baseline"), results_of(candidate, "candidate"), **rules)
    return all(c.ok for c in checks), checks, warnings


def compare(runs, *, ci: bool = False) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of `safekeel compare`: ASR per benchmark beside over-refusal and task accuracy.
    `runs`: a list of results files/directories, or a {label: results dict or path} mapping."""
    from safekeel.evaluation.compare import comparison_table, load_runs

    if isinstance(runs, dict):
        loaded = [(str(label), results_of(r, str(label))) for label, r in runs.items()]
    else:
        loaded = load_runs([str(r) for r in runs])
    return comparison_table(loaded, ci=ci)
