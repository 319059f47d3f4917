#!/usr/bin/env bash
# Bridges tuned on mixed text, for out-of-domain transfer (SmolLM2-135M, fp32). The mix ridge bridges of
# scripts/bridges.sh (64 GSM8K chains + 512 SIQA/CommonsenseQA pairs) tuned end to end (`l2a tune-bridges`) on
# 128 GSM8K train chains and 256 SIQA + CommonsenseQA (question, correct choice) pairs, under the layer sets of
# angular and the shipped gates (input-aware: they pick other sets for other text) at 0.85 / 0.7 / 0.55. Then the
# items of scripts/bridges_tuned.sh: ARC-Easy and PIQA (neither in the tuning text) and GSM8K test, and
# scripts/bridge_gain.py against no bridges and against the GSM8K-tuned bridges. Also the gates trained with the
# GSM8K-tuned bridges (scripts/gates_bridged.sh) on the same MC items with those bridges. Run scripts/bridges.sh,
# scripts/bridges_tuned.sh and scripts/gates_bridged.sh first. Resumable: rerun to continue.
#   bash scripts/bridges_mixtuned.sh [extra l2a eval flags]      (L2A_BRIDGES_OUT as in scripts/bridges.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bridge_items.sh"  # DATA, OUT, G (GSM8K items), MC (ARC-Easy, PIQA items)
M="$OUT/smollm2-mixtuned"
[ -f "$M/l2a_bridges.json" ] || l2a tune-bridges --bridges "$OUT/smollm2-mix" --bridges-out "$M" \
    --methods angular,l2a --calib-n 128 --calib-mc "$DATA/mc/siqa.jsonl" "$DATA/mc/commonsenseqa.jsonl" \
    --calib-mc-n 256 --steps 150 --val 12 --val-every 30 --out "$OUT/fit.jsonl"
for f in gsm8k mc; do [ -f "$OUT/${f}_mixtuned.jsonl" ] || grep -v '+bridges' "$OUT/$f.jsonl" > "$OUT/${f}_mixtuned.jsonl"; done
l2a eval "${MC[@]}" --methods dense,angular,l2a --results "$OUT/mc_mixtuned.jsonl" --bridges "$M" "$@"
l2a eval "${G[@]}" --methods dense,angular,l2a --results "$OUT/gsm8k_mixtuned.jsonl" --bridges "$M" "$@"
R="$OUT/mc_gates_bridged.jsonl"  # beside dense, angular and angular+bridges (tuned) of scripts/bridges_tuned.sh
[ -f "$R" ] || grep -v '"method": "l2a' "$OUT/mc_tuned.jsonl" > "$R"
l2a eval "${MC[@]}" --methods l2a --gates "$OUT/gates-bridged" --bridges "$OUT/smollm2-tuned" --results "$R" "$@"
python "$L2A_ROOT/scripts/bridge_gain.py" "$OUT/gsm8k_mixtuned.jsonl" "$OUT/mc_mixtuned.jsonl"
python "$L2A_ROOT/scripts/bridge_gain.py" "$OUT/gsm8k_mixtuned.jsonl" "$OUT/mc_mixtuned.jsonl" \
    --against "$OUT/gsm8k_tuned.jsonl" "$OUT/mc_tuned.jsonl"
l2a report "$R" --out-dir "$OUT/mc_gates_bridged_report" --no-plots
