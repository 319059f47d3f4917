#!/usr/bin/env bash
# The reasoning-axis measurements behind the README (resumable: rerun to continue).
#   bash scripts/think.sh [extra l2a eval flags]
# 1. Fit the shipped gates' think head by truncation probing on 512 GSM8K train problems (~25 min here);
#    the result is what src/l2a/shipped/smollm2-135m holds.
# 2. GSM8K test generation (first L2A_THINK_LIMIT items, default 128) on the think axis alone: the learned
#    allowance (l2a) vs a fixed cap for every prompt (think-cap, s1-style), answer agreement with dense.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_THINK_OUT:-$L2A_ROOT/runs/think}"
mkdir -p "$OUT"
l2a train-think --problems 512 --gates-out "$OUT/gates" --out "$OUT/train_think.jsonl"
l2a eval --dtype bfloat16 --gates "$OUT/gates" --task gsm8k --data "$DATA/gsm8k/test.jsonl" \
    --limit "${L2A_THINK_LIMIT:-128}" --batch-size 16 --axes think --budgets 0.2,0.4,0.6,0.8,0.95 \
    --methods dense,l2a,think-cap --seeds 1 --results "$OUT/gsm8k_think.jsonl" "$@"
l2a report "$OUT/gsm8k_think.jsonl" --out-dir "$OUT/gsm8k_think_report"
