#!/usr/bin/env bash
# Tuned bridges on the embedded default (SmolLM2-135M, fp32): the g64 ridge bridges of scripts/bridges.sh tuned end
# to end (`l2a tune-bridges`: KL to dense through the model) under the layer sets angular, greedy-kl and the shipped
# gates skip at 0.85 / 0.7 / 0.55, on 256 GSM8K train chains (12 of them held out to select the step). Then every
# method runs with them on the items of scripts/bridges.sh, and scripts/bridge_gain.py compares them with no bridges
# and with the ridge maps they started from. Run scripts/bridges.sh first (the g64 bridges, the plain lines, and
# greedy-kl's search under them). Resumable: rerun to continue.
#   bash scripts/bridges_tuned.sh [extra l2a eval flags]      (L2A_BRIDGES_OUT as in scripts/bridges.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bridge_items.sh"  # DATA, OUT, G (GSM8K items), MC (ARC-Easy, PIQA items)
T="$OUT/smollm2-tuned"
[ -f "$T/l2a_bridges.json" ] || l2a tune-bridges --bridges "$OUT/smollm2-g64" --bridges-out "$T" \
    --methods angular,greedy-kl,l2a --steps 150 --val 12 --val-every 30 --out "$OUT/fit.jsonl"
for f in gsm8k mc; do [ -f "$OUT/${f}_tuned.jsonl" ] || grep -v '+bridges' "$OUT/$f.jsonl" > "$OUT/${f}_tuned.jsonl"; done
l2a eval "${G[@]}" --methods dense,angular,greedy-kl,l2a --results "$OUT/gsm8k_tuned.jsonl" --bridges "$T" "$@"
l2a eval "${MC[@]}" --methods dense,angular,l2a --results "$OUT/mc_tuned.jsonl" --bridges "$T" "$@"
python "$L2A_ROOT/scripts/bridge_gain.py" "$OUT/gsm8k_tuned.jsonl" "$OUT/mc_tuned.jsonl"
python "$L2A_ROOT/scripts/bridge_gain.py" "$OUT/gsm8k_tuned.jsonl" "$OUT/mc_tuned.jsonl" --against "$OUT/gsm8k.jsonl" "$OUT/mc.jsonl"
