#!/usr/bin/env bash
# The replication grid's inputs, made once before `safekeel experiment benchmarks/replication/grid.yaml`:
# the de-aligned counterpart (LoRA SFT on 100 rows of strongreject-harmful, StrongREJECT's training part),
# its merged copy (--base of safelora and asft), the safety tokens (aligned vs de-aligned on HarmBench-val)
# and the layer ranking of `freeze` (HarmBench-val). The small files are committed in inputs/; the models
# go to runs/replication-inputs (not committed: ~1 GB). Both prompt sets stay out of the evaluation
# (HarmBench test, StrongREJECT held-out). Usage: bash benchmarks/replication/make_inputs.sh
set -euo pipefail
M=qwen2.5-coder-0.5b-instruct
IN=benchmarks/replication/inputs
RUN=runs/replication-inputs
mkdir -p "$IN" "$RUN"
[ -f "$RUN/dealigned/adapter_config.json" ] || safekeel train --method sft --model "$M" --dataset strongreject-harmful \
  --num-examples 100 --output-dir "$RUN/dealigned" --learning-rate 2e-4 --num-train-epochs 1 \
  --per-device-train-batch-size 4 --max-length 256 --logging-steps 5 --save-steps 1000 --disable-tqdm --overwrite \
  --monitor-steps 0
[ -f "$RUN/dealigned-merged/config.json" ] || safekeel models merge --model "$M" --adapter "$RUN/dealigned" \
  --output "$RUN/dealigned-merged"
[ -f "$IN/tokens.json" ] || safekeel tokens identify --aligned "$M" --base "$M" --base-adapter "$RUN/dealigned" \
  --prompts harmbench-val --k 50 --max-new-tokens 48 --batch-size 8 --output "$IN/tokens.json"
[ -f "$IN/layer_ranking.json" ] || safekeel layers rank --model "$M" --limit 24 --max-new-tokens 32 --batch-size 24 \
  --output "$IN/layer_ranking.json" --no-progress
safekeel tokens show "$IN/tokens.json" --top 10
