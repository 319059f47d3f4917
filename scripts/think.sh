#!/usr/bin/env bash
# The reasoning-axis measurements behind the README (resumable: rerun to continue).
#   bash scripts/think.sh [extra l2a eval flags]                       # embedded default (~25 min + eval)
#   L2A_THINK_MODEL=qwen2.5-coder-1.5b bash scripts/think.sh           # the largest real model (~2 h here)
# 1. Fit a think head by truncation probing on GSM8K train problems. For the embedded default it is fit
#    into the shipped gates (what src/l2a/shipped/smollm2-135m holds); a model without trained gates gets
#    a think-head-only artifact (its layer/group axes refuse budgets below 1).
# 2. GSM8K test generation on the think axis alone: the learned allowance (l2a) vs a fixed cap for every
#    prompt (think-cap, s1-style), accuracy and answer agreement with dense; one budget at a time over all
#    methods, so an interrupted run still holds comparable points.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
MODEL="${L2A_THINK_MODEL:-smollm2-135m}"
if [ "$MODEL" = smollm2-135m ]; then
    OUT="${L2A_THINK_OUT:-$L2A_ROOT/runs/think}"; PROBLEMS=512; LIMIT=128; TOKENS=256; BUDGETS="0.2 0.4 0.6 0.8 0.95"
else
    OUT="${L2A_THINK_OUT:-$L2A_ROOT/runs/think-$MODEL}"; PROBLEMS=128; LIMIT=200; TOKENS=320; BUDGETS="0.6 0.4 0.8"
fi
PROBLEMS="${L2A_THINK_PROBLEMS:-$PROBLEMS}"; LIMIT="${L2A_THINK_LIMIT:-$LIMIT}"; BUDGETS="${L2A_THINK_BUDGETS:-$BUDGETS}"
mkdir -p "$OUT"
[ -f "$OUT/gates/l2a_gates.safetensors" ] || l2a train-think --model "$MODEL" --problems "$PROBLEMS" \
    --max-new-tokens "$TOKENS" --gates-out "$OUT/gates" --out "$OUT/train_think.jsonl"
for b in $BUDGETS; do
    l2a eval --model "$MODEL" --dtype bfloat16 --gates "$OUT/gates" --task gsm8k --data "$DATA/gsm8k/test.jsonl" \
        --limit "$LIMIT" --batch-size 16 --max-new-tokens "$TOKENS" --axes think --budgets "$b" \
        --methods dense,l2a,think-cap --seeds 1 --results "$OUT/gsm8k_think.jsonl" "$@"
done
l2a report "$OUT/gsm8k_think.jsonl" --out-dir "$OUT/gsm8k_think_report"
