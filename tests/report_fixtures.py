"""Small synthetic run, evaluation and grid directories for the `safekeel report` tests (no model needed):
the JSON / JSONL files are written directly, in the layout `safekeel train`, `safekeel eval` and
`safekeel experiment` write."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from safekeel.evaluation.stats import wilson_interval

TOKENS = {"path": "tokens.json", "sha256": "ab" * 32, "k": 4, "preset": "paper",
          "ids": [40, 2121, 14589, 4157], "tokens": ["I", " Sorry", " sorry", " cannot"]}
HOSTILE_PROMPT = 'Explain <script>alert("x")</script> & "quotes" | pipes'


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_train_dir(path: Path, *, method: str = "pact", steps: int = 20, monitor: bool = True,
                    seed: int = 0) -> Path:
    """train_log.jsonl (loss terms every step, monitor records every 4 steps, a warning and a rollback
    event, the trainer's summary line) and safekeel_run.json with the safety-token list."""
    rows: list[dict] = []
    for step in range(1, steps + 1):
        decay = math.exp(-step / (8 + seed))
        rows.append({"step": step, "epoch": step / steps, "loss": 1 + decay, "ce": 0.9 + decay,
                     "ce_harmful": 1.2 + decay, "ce_benign": 0.5 + 0.5 * decay, "kl": 0.1 * decay,
                     "kl_harmful": 0.15 * decay, "kl_benign": 0.05 * decay, "grad_norm": 2 - decay,
                     "learning_rate": 2e-4 * (1 - step / steps), "elapsed_s": step * 1.5})
        if monitor and step % 4 == 0:
            rows.append({"step": step, "epoch": step / steps, "monitor/refusal_rate": 1 - 0.03 * step,
                         "monitor/probe_n": 8, "monitor/safety_prob_first": 0.9 - 0.02 * step,
                         "monitor/safety_prob_answer": 0.6 - 0.01 * step, "monitor/safety_n": 8,
                         "monitor/seconds": 0.5})
        if monitor and step == 10:
            rows.append({"event": "safety_warning", "step": 10, "refusal_rate": 0.7, "baseline_refusal_rate": 0.9,
                         "drop": 0.2, "tolerance": 0.1, "message": "safety monitor: refusal rate 0.700 at step 10"})
        if monitor and step == 14:
            rows.append({"event": "safety_rollback", "step": 14, "restored_step": 8, "learning_rate": 1e-4,
                         "rollbacks": 1})
    rows.append({"step": steps, "epoch": 1.0, "train_runtime": 30.0, "train_loss": 1.2, "elapsed_s": 31.0})
    _jsonl(path / "train_log.jsonl", rows)
    run = {"safekeel_version": "0.1.0", "status": "done", "global_step": steps, "wall_seconds": 33.3,
           "options": {"method": method, "model": "tiny-model", "dataset": "arith", "output_dir": str(path),
                       "pact": {"preset": "paper", "lambda_kl": 3.0},
                       "training": {"learning_rate": 2e-4, "num_train_epochs": 1.0, "seed": seed}},
           "data": {"rows": 40, "harmful_rows": 20}, "tokens": TOKENS,
           "monitor": {"status": "on" if monitor else "off", "every_steps": 4, "rollbacks": int(monitor),
                       "warnings": [("safety monitor: 2 of the 40 prompts of harmbench-val are among this run's "
                                    "training rows; they are left out of the monitor")] if monitor else []}}
    (path / "safekeel_run.json").write_text(json.dumps(run), encoding="utf-8")
    return path


def harm_rows(judge: str = "keyword", flip: tuple[int, ...] = ()) -> list[dict]:
    """10 HarmBench-like answers: 0-3 refusals (safe), 4-9 compliances (unsafe); `flip` inverts verdicts."""
    rows = []
    for i in range(10):
        refusal = i < 4
        verdict = "safe" if refusal else "unsafe"
        if i in flip:
            verdict = "unsafe" if verdict == "safe" else "safe"
        rows.append({"id": f"hb-{i}", "prompt": HOSTILE_PROMPT if i == 5 else f"harmful request {i}",
                     "category": "illegal", "response": "I'm sorry, I can't help." if refusal else f"Sure, step {i}",
                     "verdict": verdict, "refusal": refusal, "judge": judge})
    return rows


def write_eval_dir(path: Path, *, adapter: str | None, judge: str = "keyword", flip: tuple[int, ...] = (),
                   probes: bool = True, task: bool = True, sha: str = "11" * 32) -> Path:
    """results.json (+ samples) as `eval safety` and `eval task` write them."""
    rows = harm_rows(judge, flip)
    _jsonl(path / "samples_harmbench.jsonl", rows)
    unsafe = sum(r["verdict"] == "unsafe" for r in rows)
    results = {"safekeel_version": "0.1.0", "model": {"spec": "tiny-model", "kind": "local", "sha256": sha,
                                                      "adapter": adapter, "adapter_sha256": "22" * 32 if adapter else None},
               "judge": {"id": judge},
               "benchmarks": {"harmbench": {"n": 10, "judged": 10, "unsafe": unsafe, "safe": 10 - unsafe, "errors": 0,
                                            "asr": unsafe / 10, "ci95": wilson_interval(unsafe, 10), "refusals": 4,
                                            "refusal_rate": 0.4, "judge": judge, "samples": "samples_harmbench.jsonl"}},
               "tasks": {}, "probes": {}}
    if probes:
        for key, name, k, n in (("over_refusal_everyday", "everyday", 2, 12), ("over_refusal", "benign", 3, 8)):
            sample = [{"id": f"{name}-{i}", "prompt": f"benign {name} prompt {i}", "response":
                       "I can't do that." if i < k else "Here you go.", "refusal": i < k} for i in range(n)]
            _jsonl(path / f"samples_probe_{name}.jsonl", sample)
            results["probes"][key] = {"rate": k / n, "k": k, "n": n, "ci95": wilson_interval(k, n),
                                      "samples": f"samples_probe_{name}.jsonl"}
    if task:
        results["tasks"]["arith"] = {"accuracy": 0.7, "correct": 7, "n": 10, "ci95": wilson_interval(7, 10),
                                     "extraction_failures": 0, "cut_off": 2, "cut_off_known": 10,
                                     "cut_off_rate": 0.2, "accuracy_finished": 0.75, "truncated": 0,
                                     "samples": "samples_task_arith.jsonl"}
    (path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return path


def write_runs_dir(root: Path) -> Path:
    """root/pact-a (training) with root/eval-pact-a (keyword) and root/eval-pact-a-llm (a second judge over
    the same answers, 2 verdicts flipped), root/eval-base (base model, no probes)."""
    train = write_train_dir(root / "pact-a")
    write_eval_dir(root / "eval-pact-a", adapter=str(train))
    write_eval_dir(root / "eval-pact-a-llm", adapter=str(train), judge="llm-judge", flip=(1, 6))
    write_eval_dir(root / "eval-base", adapter=None, probes=False, sha="33" * 32)
    return root


def pareto_png() -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=80)
    ax = fig.subplots()
    ax.scatter([0.1, 0.3, 0.5], [0.6, 0.7, 0.8], c=["#d62728", "#2ca02c", "#1f77b4"], s=60)
    ax.set_xlabel("ASR")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_grid_dir(root: Path) -> Path:
    """A `safekeel experiment` grid: grid.yaml, results.csv, tables.md, pareto.png, two cells with runs and
    one that failed before training (cell.json only)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.yaml").write_text("methods: [sft, pact]\ndatasets: [arith]\nseeds: [0]\n", encoding="utf-8")
    cells = [("sft-arith-s0", "sft"), ("pact-arith-s0", "pact")]
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["cell", "method", "dataset", "harmful_ratio", "learning_rate", "seed", "asr",
                    "over_refusal_everyday", "over_refusal_risky", "accuracy"])
        for cell, method in cells:
            w.writerow([cell, method, "arith", 0.5, 2e-4, 0, 0.6, 0.17, 0.38, 0.7])
    (root / "tables.md").write_text(
        "# Grid results\n\n| method | ASR | over-refusal everyday | accuracy |\n|---|---|---|---|\n"
        "| sft | 60.0% | 16.7% | 70.0% |\n| pact | 30.0% | 16.7% | 70.0% |\n\nOne seed per cell.\n", encoding="utf-8")
    (root / "pareto.png").write_bytes(pareto_png())
    for i, (cell, method) in enumerate(cells):
        base = root / "cells" / cell
        base.mkdir(parents=True)
        settings = {"id": cell, "method": method, "dataset": "arith", "harmful_ratio": 0.5, "seed": 0}
        (base / "cell.json").write_text(json.dumps({"cell": cell, "label": method, "status": "done",
                                                    "settings_sha256": "ab" * 32, "settings": settings}))
        train = write_train_dir(base / "train", method=method, monitor=method == "pact", seed=i)
        write_eval_dir(base / "eval", adapter=str(train), sha=f"{i}{i}" * 32)
    failed = root / "cells" / "lisa-arith-s0"
    failed.mkdir()
    (failed / "cell.json").write_text(json.dumps({"cell": "lisa-arith-s0", "status": "failed", "error": "out of memory",
                                                  "settings": {"method": "lisa", "dataset": "arith"}}))
    return root
