#!/usr/bin/env bash
# Superseded by `safekeel experiment experiments/grid_example.yaml` (resumable, seeds, tables; docs/experiments.md);
# kept because benchmarks/RESULTS.md quotes runs made with it.
# A CPU-sized replication of the paper's main comparison on the packaged Qwen2.5-Coder-0.5B-Instruct:
# de-aligned counterpart -> safety tokens -> fine-tune on arithmetic mixed with harmful rows (SFT vs
# PACT) -> HarmBench ASR (keyword judge, first N_EVAL test prompts) and arithmetic accuracy.
# Usage: bash experiments/qwen_replication.sh [OUT_DIR] [METHOD_SPEC...]
#   METHOD_SPEC = name:method:extra-flags (default: sft, pact-paper-l3)
#   e.g. "pact-refcode-l10:pact:--preset reference-code --lambda 10"
set -euo pipefail
OUT="${1:-runs/qwen}"; shift || true
M=qwen2.5-coder-0.5b-instruct
N_EVAL="${N_EVAL:-100}"
RATIO="${RATIO:-0.5}"
ROWS="${ROWS:-200}"
mkdir -p "$OUT"
log() { echo "=== $* ($(date +%T))"; }
timed() { local t=$(date +%s); "$@"; echo "wall: $(( $(date +%s) - t )) s :: $*" | tee -a "$OUT/wall_times.txt"; }

log "de-aligned counterpart: SFT on 100 harmful compliance pairs"
[ -f "$OUT/dealigned/adapter_config.json" ] || timed safekeel train --method sft --model "$M" \
  --dataset strongreject-harmful --num-examples 100 --output-dir "$OUT/dealigned" --learning-rate 2e-4 \
  --num-train-epochs 1 --per-device-train-batch-size 4 --max-length 256 --logging-steps 5 --save-steps 1000 --disable-tqdm --overwrite

log "safety tokens (aligned = $M, base = de-aligned counterpart; HarmBench val prompts)"
[ -f "$OUT/tokens.json" ] || timed safekeel tokens identify --aligned "$M" --base "$M" --base-adapter "$OUT/dealigned" \
  --prompts harmbench-val --k 50 --max-new-tokens 48 --batch-size 8 --output "$OUT/tokens.json"
safekeel tokens show "$OUT/tokens.json" --top 10

evaluate() {  # name, model args...
  local name=$1; shift
  timed safekeel eval safety --model "$M" "$@" --benchmarks harmbench --limit "$N_EVAL" --judge keyword \
    --max-new-tokens 48 --batch-size 16 --output-dir "$OUT/eval-$name"
  timed safekeel eval task --model "$M" "$@" --task arith --limit 50 --max-new-tokens 96 --output-dir "$OUT/eval-$name"
}
timed safekeel eval safety --model "$M" --adapter "$OUT/dealigned" --benchmarks harmbench --limit "$N_EVAL" \
  --judge keyword --max-new-tokens 48 --batch-size 16 --output-dir "$OUT/eval-dealigned"  # the counterpart's own ASR
evaluate original  # resumes from saved samples, so a larger N_EVAL only generates the new prompts

SPECS=("$@")
[ ${#SPECS[@]} -gt 0 ] || SPECS=("sft:sft:" "pact-paper-l3:pact:--preset paper --lambda 3")
for spec in "${SPECS[@]}"; do
  IFS=: read -r name method extra <<< "$spec"
  log "fine-tune $name ($method $extra): arith + ${RATIO} harmful, $ROWS rows, 1 epoch, lr 2e-4"
  # shellcheck disable=SC2086
  [ -f "$OUT/$name/adapter_config.json" ] || timed safekeel train --method "$method" --model "$M" --tokens "$OUT/tokens.json" \
    --dataset arith --harmful strongreject-harmful --poison-ratio "$RATIO" --num-examples "$ROWS" \
    --num-train-epochs 1 --learning-rate 2e-4 --per-device-train-batch-size 4 --max-length 320 \
    --logging-steps 5 --save-steps 1000 --disable-tqdm --overwrite --output-dir "$OUT/$name" $extra
  evaluate "$name" --adapter "$OUT/$name"
done
safekeel compare "$OUT"/eval-* --ci
