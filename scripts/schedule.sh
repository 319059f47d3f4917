#!/usr/bin/env bash
# Choose the scalar -> (layers, heads, think) schedule from measurements (resumable).
#   bash scripts/schedule.sh [extra l2a eval flags]
# GSM8K *train* problems (a calibration split, not the test set), generation with the shipped gates at
# scalar budgets 0.5 and 0.7 under each schedule in l2a.budget.SCHEDULES (and each axis alone, for
# reference); the report ranks schedules by
# how many of their points lie on the frontier of answer agreement with dense vs measured seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_SCHEDULE_OUT:-$L2A_ROOT/runs/schedule}"
mkdir -p "$OUT"
l2a eval --dtype bfloat16 --task gsm8k --data "$DATA/gsm8k/train.jsonl" --limit "${L2A_SCHEDULE_LIMIT:-64}" \
    --batch-size 16 --axes layers,think,all:layers-first,all:think-first,all:balanced --budgets 0.5,0.7 --methods dense,l2a \
    --seeds 1 --results "$OUT/gsm8k_train.jsonl" "$@"
l2a report "$OUT/gsm8k_train.jsonl" --out-dir "$OUT/report"
