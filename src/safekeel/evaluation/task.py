"""`eval task`: accuracy on a downstream task, with answer extraction and a Wilson interval.

Tasks come from `safekeel.tasks.get_task(name_or_file)` (arith, sentiment, topic, gsm8k, sst2,
agnews, or a local labelled file); each gives `examples(split, n, seed)` with `id`, `prompt`, `answer`,
plus `extract(response)` (the final number; the label word) and `is_correct(response, example)`; any
object with that interface works. Answers are generated greedily with the evaluation generator
(resumable, like `eval safety`), each row noting whether the token budget cut it off (`cut_off`; the
summary gives the share, `cut_off_rate`, and the accuracy over finished answers), and scored on every run, so a better extractor rescores stored
answers without regenerating them. The output directory is locked while the run writes
(`safekeel.locking.RunLock`), so a second evaluation into it fails at once instead of interleaving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.evaluation.results import check_output_dir, merge_results
from safekeel.evaluation.safety import generation_settings
from safekeel.evaluation.samples import SampleStore
from safekeel.evaluation.stats import wilson_interval
from safekeel.locking import RunLock


def resolve_task(spec: str):
    """The task named by `spec`: arith, sentiment, topic, gsm8k, sst2, agnews or a labelled file."""
    from safekeel.tasks import get_task

    return get_task(spec)


@dataclass
class TaskConfig:
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    system: str | None = None
    overwrite: bool = False
    progress: bool = True
    command: str = ""
    extra: dict = field(default_factory=dict)  # recorded in the run entry


def score_rows(task, rows: list[dict], examples: dict) -> dict:
    """Fill `extracted` and `correct` on sample rows; return the accuracy summary.

    `cut_off` counts answers stopped by the token budget (rows whose generator said so; `cut_off_known`
    is how many rows say either way), and `accuracy_finished` is the accuracy over the finished ones:
    a high cut-off share with a low accuracy means the budget, not the skill, was measured."""
    correct = failures = cut = known = correct_finished = 0
    for row in rows:
        ex = examples[row["id"]]
        row["extracted"] = task.extract(row["response"])
        row["correct"] = bool(task.is_correct(row["response"], ex))
        correct += row["correct"]
        failures += row["extracted"] is None
        if "cut_off" in row:
            known += 1
            cut += bool(row["cut_off"])
            correct_finished += row["correct"] and not row["cut_off"]
    n, finished = len(rows), known - cut
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n, "ci95": wilson_interval(correct, n),
            "extraction_failures": failures, "cut_off": cut, "cut_off_known": known,
            "cut_off_rate": cut / known if known else None,
            "accuracy_finished": correct_finished / finished if finished else None}


def run_task_eval(generator, task, out_dir: str | Path, cfg: TaskConfig, spec: str | None = None) -> dict:
    """Generate, score and merge `tasks.<name>` into DIR/results.json; returns the results."""
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    check_output_dir(out_dir, generator.fingerprint, cfg.overwrite)
    examples = task.examples(cfg.split, n=cfg.limit, seed=cfg.seed)
    if not examples:
        raise SafekeelError(f"task {task.name!r} has no {cfg.split!r} examples")
    with RunLock(out_dir, cfg.command or "eval task"):
        check_output_dir(out_dir, generator.fingerprint, cfg.overwrite)  # again: a run may have ended meanwhile
        return _locked_run(generator, task, examples, out_dir, cfg, spec, t_start)


def _locked_run(generator, task, examples, out_dir: Path, cfg: TaskConfig, spec: str | None, t_start: float) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)  # the lock makes it too, except on secondary DDP ranks
    records = [{"id": str(e.id), "prompt": e.prompt, "answer": str(e.answer)} for e in examples]
    texts = [generator.format(r["prompt"], cfg.system) for r in records]
    gen = generation_settings(generator, cfg.system)
    store = SampleStore(out_dir / f"samples_task_{task.name}.jsonl", records, texts, generator.fingerprint, gen,
                        overwrite=cfg.overwrite)
    t_gen = store.fill(generator.generate, generator.batch_size, desc=task.name, progress=cfg.progress)
    load_s = getattr(generator, "load_s", 0.0)
    generator.close()
    summary = score_rows(task, store.ordered(), {str(e.id): e for e in examples})
    store.save()
    entry = {**summary, "task": spec or task.name, "split": cfg.split, "seed": cfg.seed, "limit": cfg.limit,
             "generation": gen, "samples": store.path.name, "reused": store.reused,
             "truncated": sum(bool(r.get("truncated")) for r in store.ordered())}
    run = {"command": cfg.command or "eval task", "generation": {**gen, "batch_size": generator.batch_size},
           **cfg.extra,
           "timing": {"load_s": round(load_s, 2), "generate_s": round(t_gen, 2),
                      "total_s": round(time.perf_counter() - t_start, 2)}}
    return merge_results(out_dir, generator.fingerprint, {"tasks": {task.name: entry}}, run,
                         overwrite=cfg.overwrite, top={"generation": gen})
