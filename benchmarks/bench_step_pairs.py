"""Per-step cost of PACT (reference cache) against SFT, measured as interleaved pairs in one process.

`bench_train.py` runs each mode in its own process one after another, so a shared machine's slow
drifts land on whichever mode is running; here both trainers live in one process and their steps
alternate (SFT, PACT, SFT, PACT, ...) on the same batch of the same data, and the ratio is the median
of the per-pair ratios. Time = the trainer's `compute_loss` + backward (no optimizer step, which is
the same for both). Memory is not measured here (see bench_train.py).

    python benchmarks/bench_step_pairs.py --model smollm2-135m-instruct --pairs 10 \\
        --output benchmarks/results/bench_step_pairs_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_train  # shared set-up (model, tokens, synthetic chat data) and per-mode train options


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tiny", action="store_true", help="the 2-layer test model (smoke test)")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--answer-tokens", type=int, default=96)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--output", default="bench_step_pairs.json")
    args = p.parse_args(argv)

    import torch

    from safekeel.training.config import build_config
    from safekeel.training.run import prepare

    root = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    setup_args = bench_train.pair_setup_args(args)
    setup = bench_train.make_setup(setup_args, root)
    trainers, batches = {}, {}
    for mode in ("sft", "pact-cache"):
        flat = bench_train.mode_flags(mode, setup, setup_args, root / mode, max_steps=1)
        prep = prepare(build_config(flat), progress=False)
        trainers[mode] = prep.trainer
        batches[mode] = prep.collator(prep.examples[: args.batch_size])
        prep.trainer.model.train()

    times = {"sft": [], "pact-cache": []}
    for i in range(args.warmup + args.pairs):
        for mode in (("sft", "pact-cache") if i % 2 == 0 else ("pact-cache", "sft")):  # alternate who goes first
            dt, _ = bench_train.timed_step(trainers[mode], batches[mode])
            if i >= args.warmup:
                times[mode].append(dt)
    ratios = [c / s for s, c in zip(times["sft"], times["pact-cache"])]
    result = {"settings": vars(args), "threads": torch.get_num_threads(), "times": times, "pair_ratios": ratios,
              "median_s": {m: statistics.median(t) for m, t in times.items()},
              "median_pair_ratio": statistics.median(ratios),
              "pair_ratio_range": [min(ratios), max(ratios)]}
    print(f"\n{'mode':<11} {'median s (fwd+bwd)':>19}")
    for m, t in result["median_s"].items():
        print(f"{m:<11} {t:>19.3f}")
    print(f"pact-cache / sft, median of {len(ratios)} interleaved pairs: {result['median_pair_ratio']:.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
