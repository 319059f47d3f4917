#!/usr/bin/env bash
# The full-size Pareto sweep behind the README's published table (resumable: rerun to continue).
#   bash scripts/pareto.sh [extra l2a eval flags]
# 1. tuned-static: one budget-only gate set trained per budget (0.85, 0.7, 0.55; 150 steps each, ~20 min each here).
# 2. MC sets by log-likelihood (n=500 each) and the full GSM8K test split (1,319) by teacher-forced
#    log-likelihood of the reference solution, on the embedded default with its shipped gates, bf16, 2 threads.
#    Scoring tasks have no thinking to cut, so the layer axis alone is swept (`--axes layers`).
#    Then each file's points are timed again together, round-robin (median of 5 rounds on 100 items; 3 rounds
#    on 50 for GSM8K), so their latencies compare within the run (retime.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_PARETO_OUT:-$L2A_ROOT/runs/pareto}"
TUNED="${L2A_TUNED_GATES:-$L2A_ROOT/runs/tuned}"
mkdir -p "$OUT"
for b in 0.85 0.70 0.55; do
    [ -f "$TUNED/b$b/l2a_gates.safetensors" ] || l2a train --fixed-budget "$b" --steps 150 --max-len 176 --gates-out "$TUNED/b$b"
done
METHODS="dense,l2a,block-influence,angular,greedy-kl,tuned-static"
BUDGETS="1.0,0.85,0.7,0.55"
l2a eval --dtype bfloat16 --task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl" \
    --data "$DATA/mc/winogrande.jsonl" --limit 500 --budgets "$BUDGETS" --axes layers --methods "$METHODS" --seeds 1 \
    --tuned-gates "$TUNED" --timing-repeats 5 --timing-items 100 --results "$OUT/mc.jsonl" "$@"
l2a eval --dtype bfloat16 --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit "${L2A_GSM8K_LIMIT:-1319}" \
    --budgets "$BUDGETS" --axes layers --methods "$METHODS" --seeds 1 --tuned-gates "$TUNED" \
    --timing-repeats 3 --timing-items 50 --results "$OUT/gsm8k_full.jsonl" "$@"
l2a report "$OUT/mc.jsonl" --out-dir "$OUT/mc_report"
l2a report "$OUT/gsm8k_full.jsonl" --out-dir "$OUT/gsm8k_report"
