#!/usr/bin/env bash
# Gates trained with bridges on the embedded default (SmolLM2-135M, fp32): the shipped gates' recipe (score-function
# estimator, greedy-KL warm start, batch cost hinge, signed dual) with the tuned bridges of scripts/bridges_tuned.sh
# running in training (`l2a train --bridges`: the warm-start search and every sampled layer set run them), 200 steps
# instead of the shipped 300 (fp32 on 2 cores). Then the gates on the first 200 GSM8K test items with those bridges,
# beside the static lines of scripts/bridges_tuned.sh (copied in). Then side-by-side timing: the dense,
# greedy-kl+bridges and l2a+bridges lines copied to a file of their own and timed again together, interleaved batch
# by batch, 5 rounds on the first 40 items (docs/results/bridges/gsm8k_gates_bridged_timed.jsonl). Run
# scripts/bridges_tuned.sh first. Resumable.
#   bash scripts/gates_bridged.sh [extra l2a eval flags]      (L2A_BRIDGES_OUT as in scripts/bridges.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bridge_items.sh"  # DATA, OUT, G (GSM8K items), MC (ARC-Easy, PIQA items)
T="$OUT/smollm2-tuned"
GATES="$OUT/gates-bridged"
[ -f "$GATES/l2a_config.json" ] || l2a train --gates-out "$GATES" --bridges "$T" --dtype float32 --steps 200 \
    --estimator score --samples 4 --dense-at-full --cost batch --row-tol 0.1 --dual signed --noise-end 0.1 \
    --warm-start greedy-kl --warm-scale 3.0 --lr 1e-3 --max-len 160 --out "$OUT/fit.jsonl"
R="$OUT/gsm8k_gates_bridged.jsonl"
[ -f "$R" ] || grep -v '"method": "l2a' "$OUT/gsm8k_tuned.jsonl" > "$R"
G+=(--gates "$GATES" --bridges "$T")
l2a eval "${G[@]}" --methods l2a --results "$R" "$@"
l2a report "$R" --out-dir "$OUT/gates_bridged_report" --no-plots
TM="$OUT/gsm8k_gates_bridged_timed.jsonl"
[ -f "$TM" ] || grep -E '"method": "(dense|greedy-kl\+bridges|l2a\+bridges)"' "$R" > "$TM"
l2a eval "${G[@]}" --methods dense,greedy-kl,l2a --results "$TM" --timing-repeats 5 --timing-items 40 "$@"
l2a report "$TM" --out-dir "$OUT/timed_report" --no-plots
