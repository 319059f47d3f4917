#!/usr/bin/env bash
# Bridges on the embedded default (SmolLM2-135M, fp32): fit each layer's linear bridge on the static baselines'
# calibration text (64 GSM8K train chains), then score every method with and without them, on the first 200
# GSM8K test items by teacher-forced NLL and on the first 500 ARC-Easy and PIQA items, at 0.85 / 0.7 (/ 0.55) of
# the layers. Lines with bridges are named METHOD+bridges (their FLOPs include the bridges). `greedy-kl+bridges`
# searches its order under the bridges (a search of its own, cached apart). Resumable: rerun to continue.
#   bash scripts/bridges.sh [extra l2a eval flags]      (L2A_BRIDGES_OUT overrides the output directory)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_BRIDGES_OUT:-$L2A_ROOT/runs/bridges}"
BRIDGES="$OUT/smollm2-g64"
mkdir -p "$OUT"
[ -f "$BRIDGES/l2a_bridges.json" ] || l2a fit-bridges --model smollm2-135m --dtype float32 --bridges-out "$BRIDGES" \
    --out "$OUT/fit.jsonl"
G=(--model smollm2-135m --dtype float32 --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200
   --budgets 0.85,0.7,0.55 --axes layers --seeds 1 --results "$OUT/gsm8k.jsonl")
MC=(--model smollm2-135m --dtype float32 --task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl"
    --limit 500 --budgets 0.85,0.7 --axes layers --seeds 1 --results "$OUT/mc.jsonl")
both() {  # the same points without and with the bridges
    l2a eval "$@" --methods dense,angular,l2a
    l2a eval "$@" --methods dense,angular,l2a --bridges "$BRIDGES"
}
both "${G[@]}" "$@"
both "${MC[@]}" "$@"
l2a eval "${G[@]}" --methods greedy-kl "$@"
l2a eval "${G[@]}" --methods greedy-kl --bridges "$BRIDGES" "$@"
for f in gsm8k mc; do l2a report "$OUT/$f.jsonl" --out-dir "$OUT/${f}_report"; done
python "$L2A_ROOT/scripts/bridge_gain.py" "$OUT/gsm8k.jsonl" "$OUT/mc.jsonl"
