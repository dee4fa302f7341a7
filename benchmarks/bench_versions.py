"""Per-step cost of this code against another version of safekeel, interleaved in one process.

A refactor must not slow training down, and on a shared machine two separate runs drift apart by more
than the effect. So the other version (`--baseline-src`, the `src` directory of any checkout, e.g.
`git archive f7008ee | tar -x -C /tmp/old`) is imported as a second package, `safekeel_baseline` (a
copy with its imports renamed), both build their trainers on the same model, data and safety tokens,
and their steps alternate (this, baseline, baseline, this, ...) on the same batch. Reported per mode: the
median seconds of `compute_loss` + backward and the median of the per-pair ratios this / baseline.
The losses of the two versions are compared too (they must agree: the refactor changes no math).

    git archive f7008ee | tar -x -C /tmp/old
    python benchmarks/bench_versions.py --baseline-src /tmp/old/src --model smollm2-135m-instruct \\
        --pairs 12 --output benchmarks/results/bench_versions_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_train  # shared set-up (model, tokens, synthetic chat data) and per-mode train options

_IMPORT = re.compile(r"\bsafekeel(?=[.\s:\"'])")


def import_baseline(src: Path, name: str = "safekeel_baseline"):
    """Import `src/safekeel` as package `name` (a renamed copy in a temporary directory)."""
    package = Path(src) / "safekeel"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"--baseline-src {src}: no safekeel/__init__.py there")
    root = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    shutil.copytree(package, root / name)
    for file in (root / name).rglob("*.py"):
        file.write_text(_IMPORT.sub(name, file.read_text(encoding="utf-8")), encoding="utf-8")
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-src", required=True, help="the src/ directory of the version to compare with")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tiny", action="store_true", help="the 2-layer test model (smoke test)")
    p.add_argument("--modes", default="sft,pact-cache,pact-live")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--answer-tokens", type=int, default=96)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--output", default="bench_versions.json")
    args = p.parse_args(argv)

    import torch

    baseline = import_baseline(Path(args.baseline_src))
    versions = {"this": "safekeel", "baseline": baseline.__name__}
    root = Path(tempfile.mkdtemp(prefix="bench-versions-"))
    setup_args = bench_train.pair_setup_args(args)
    setup = bench_train.make_setup(setup_args, root)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    trainers, batches = {}, {}
    for version, package in versions.items():
        config = importlib.import_module(f"{package}.training.config")
        run = importlib.import_module(f"{package}.training.run")
        for mode in modes:
            flat = bench_train.mode_flags(mode, setup, setup_args, root / version / mode, max_steps=1)
            prep = run.prepare(config.build_config(flat), progress=False)
            trainers[version, mode] = prep.trainer
            batches[version, mode] = prep.collator(prep.examples[: args.batch_size])
            prep.trainer.model.train()

    times = {f"{v}/{m}": [] for v in versions for m in modes}
    losses = {f"{v}/{m}": None for v in versions for m in modes}
    for i in range(args.warmup + args.pairs):
        for mode in modes:
            order = ("this", "baseline") if i % 2 == 0 else ("baseline", "this")  # alternate who goes first
            for version in order:
                dt, loss = bench_train.timed_step(trainers[version, mode], batches[version, mode])
                losses[f"{version}/{mode}"] = loss
                if i >= args.warmup:
                    times[f"{version}/{mode}"].append(dt)
    result = {"settings": vars(args), "threads": torch.get_num_threads(), "times": times, "losses": losses,
              "modes": {}}
    print(f"\n{'mode':<11} {'this s':>8} {'baseline s':>11} {'this/baseline':>14} {'pair range':>13} "
          f"{'loss this':>10} {'loss base':>10}")
    for mode in modes:
        a, b = times[f"this/{mode}"], times[f"baseline/{mode}"]
        ratios = [x / y for x, y in zip(a, b)]
        row = {"median_s_this": statistics.median(a), "median_s_baseline": statistics.median(b),
               "median_pair_ratio": statistics.median(ratios), "pair_ratio_range": [min(ratios), max(ratios)],
               "loss_this": losses[f"this/{mode}"], "loss_baseline": losses[f"baseline/{mode}"]}
        result["modes"][mode] = row
        print(f"{mode:<11} {row['median_s_this']:>8.3f} {row['median_s_baseline']:>11.3f} "
              f"{row['median_pair_ratio']:>14.3f} {min(ratios):>6.2f}-{max(ratios):<6.2f} "
              f"{row['loss_this']:>10.5f} {row['loss_baseline']:>10.5f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
