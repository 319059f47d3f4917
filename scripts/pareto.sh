#!/usr/bin/env bash
# The full-size Pareto sweep behind the README's published table (resumable: rerun to continue).
#   bash scripts/pareto.sh [extra l2a eval flags]
# MC sets by log-likelihood (n=500 each) and GSM8K test by teacher-forced log-likelihood of the
# reference solution, on the embedded default with its shipped gates, bf16, 2 threads.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_PARETO_OUT:-$L2A_ROOT/runs/pareto}"
mkdir -p "$OUT"
METHODS="dense,l2a,block-influence,angular"
BUDGETS="1.0,0.85,0.7"
l2a eval --dtype bfloat16 --task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl" \
    --data "$DATA/mc/winogrande.jsonl" --limit 500 --budgets "$BUDGETS" --methods "$METHODS" --seeds 1 \
    --results "$OUT/mc.jsonl" "$@"
l2a eval --dtype bfloat16 --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit "${L2A_GSM8K_LIMIT:-500}" \
    --budgets "$BUDGETS" --methods "$METHODS" --seeds 1 --results "$OUT/gsm8k.jsonl" "$@"
l2a report "$OUT/mc.jsonl" --out-dir "$OUT/mc_report"
l2a report "$OUT/gsm8k.jsonl" --out-dir "$OUT/gsm8k_report"
