#!/usr/bin/env bash
# Learned gates on a larger model (Qwen2.5-Coder-0.5B, 24 layers), scored on the items and next to the static lines of
# scripts/pareto_scale.sh (run that first: this appends to its results file). The recipe is the embedded default's
# best out-of-domain one (`--warm-domains`, docs/results/recipes.md): one greedy-KL order per training source (16
# GSM8K chains; 16 SIQA + CommonsenseQA pairs), the router fit so each prompt starts from its own source's order,
# then half of each step on those pairs. 100 steps instead of 300 (~22 s a step on 2 fp32 cores, after ~32 min of
# search). Then GSM8K by teacher-forced NLL (first 200 test items) for dense, the gates and the two static methods.
# Resumable: rerun to continue.
#   bash scripts/gates_scale.sh [extra l2a eval flags]      (L2A_SCALE_MODEL, L2A_SCALE_STEPS override)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
MODEL="${L2A_SCALE_MODEL:-qwen2.5-coder-0.5b}"
OUT="${L2A_SCALE_OUT:-$L2A_ROOT/runs/scale-$MODEL}"
GATES="$OUT/gates-domains"
mkdir -p "$OUT"
l2a train --model "$MODEL" --dtype float32 --gates-out "$GATES" --seed 0 --steps "${L2A_SCALE_STEPS:-100}" \
    --max-len 160 --lr 1e-3 --warm-start greedy-kl --warm-scale 3 --estimator score --samples 4 --dense-at-full \
    --dual signed --noise-end 0.1 --warm-text 16 --warm-domains --train-text 0.5 \
    --mix-mc "$DATA/mc/siqa.jsonl" "$DATA/mc/commonsenseqa.jsonl" --out "$OUT/train.jsonl"
l2a eval --model "$MODEL" --gates "$GATES" --task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl" \
    --limit 500 --budgets 1.0,0.85,0.7 --axes layers --methods l2a --seeds 1 --results "$OUT/mc.jsonl" "$@"
l2a eval --model "$MODEL" --gates "$GATES" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200 \
    --budgets 1.0,0.85,0.7 --axes layers --methods dense,l2a,angular,block-influence --seeds 1 \
    --results "$OUT/gsm8k.jsonl" "$@"
for f in mc gsm8k; do l2a report "$OUT/$f.jsonl" --out-dir "$OUT/${f}_report"; done
