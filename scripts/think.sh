#!/usr/bin/env bash
# The reasoning-axis measurements behind the README (resumable: rerun to continue).
#   bash scripts/think.sh [extra l2a eval flags]                       # embedded default (~25 min + eval)
#   L2A_THINK_MODEL=qwen2.5-coder-1.5b bash scripts/think.sh           # the largest real model (~4 h here)
# 1. Fit a think head by truncation probing on GSM8K train problems. For the embedded default it is fit
#    into the shipped gates (what src/l2a/shipped/smollm2-135m holds); a model without trained gates gets
#    a think-head-only artifact (its layer/group axes refuse budgets below 1).
# 2. GSM8K test generation on the think axis alone: the learned allowance (l2a) vs a fixed cap for every
#    prompt (think-cap, s1-style), accuracy and answer agreement with dense; one ([task/]methods:budget)
#    point at a time, in an order that keeps an interrupted run's points comparable (L2A_THINK_POINTS
#    overrides). For the larger model also budget-aware prompting (task gsm8k-budget: capped rows are asked
#    for a concise chain), with its own think head probed on concise chains, and gsm8k-concise (every row
#    asked, uncapped) as its reference; all points go to one results file, so the report compares them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
MODEL="${L2A_THINK_MODEL:-smollm2-135m}"
if [ "$MODEL" = smollm2-135m ]; then
    OUT="${L2A_THINK_OUT:-$L2A_ROOT/runs/think}"; PROBLEMS=512; LIMIT=128; TOKENS=256
    POINTS="dense,l2a,think-cap:0.2 dense,l2a,think-cap:0.4 dense,l2a,think-cap:0.6 dense,l2a,think-cap:0.8 dense,l2a,think-cap:0.95"
else  # pairs of similar mean think tokens first (caps are round(b * 256) tokens; this model thinks ~270)
    OUT="${L2A_THINK_OUT:-$L2A_ROOT/runs/think-$MODEL}"; PROBLEMS=128; LIMIT=200; TOKENS=320
    POINTS="dense,l2a:0.5 think-cap:0.9 l2a:0.3 think-cap:0.8 l2a:0.7 think-cap:0.95
            gsm8k-concise/dense:1.0 think-cap:0.45 think-cap:0.35 gsm8k-budget/dense,l2a:0.7
            gsm8k-budget/think-cap:0.6 gsm8k-budget/think-cap:0.37 gsm8k-budget/l2a:0.5
            gsm8k-budget/think-cap:0.004 gsm8k-budget/think-cap:0.2"
    # 256 problems; the fit chooses the triage rule here (think.fit). think-cap:0.004 is a 1-token cap:
    # no thinking, the end of the fixed-cap curve that mixtures of caps interpolate to
    [ -f "$OUT/concise/gates/l2a_gates.safetensors" ] || l2a train-think --model "$MODEL" --dtype bfloat16 \
        --prompt concise --problems 256 --max-new-tokens "$TOKENS" --gates-out "$OUT/concise/gates" \
        --out "$OUT/concise/train_think.jsonl"
fi
PROBLEMS="${L2A_THINK_PROBLEMS:-$PROBLEMS}"; LIMIT="${L2A_THINK_LIMIT:-$LIMIT}"; POINTS="${L2A_THINK_POINTS:-$POINTS}"
mkdir -p "$OUT"
[ -f "$OUT/gates/l2a_gates.safetensors" ] || l2a train-think --model "$MODEL" --problems "$PROBLEMS" \
    --max-new-tokens "$TOKENS" --gates-out "$OUT/gates" --out "$OUT/train_think.jsonl"
for point in $POINTS; do  # [TASK/]METHODS:BUDGET
    task=gsm8k; gates="$OUT/gates"
    if [[ $point == */* ]]; then task="${point%%/*}"; point="${point#*/}"; fi
    [ "$task" = gsm8k ] || gates="$OUT/concise/gates"
    l2a eval --model "$MODEL" --dtype bfloat16 --gates "$gates" --task "$task" --data "$DATA/gsm8k/test.jsonl" \
        --limit "$LIMIT" --batch-size 16 --max-new-tokens "$TOKENS" --axes think --budgets "${point#*:}" \
        --methods "${point%%:*}" --seeds 1 --results "$OUT/gsm8k_think.jsonl" "$@"
done
l2a report "$OUT/gsm8k_think.jsonl" --out-dir "$OUT/gsm8k_think_report"
