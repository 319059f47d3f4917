#!/usr/bin/env bash
# Bridges on the embedded default (SmolLM2-135M, fp32). Two bridge sets, each layer's map fit by ridge regression
# on the dense model's hidden states: *g64* on the static baselines' calibration text (64 GSM8K train chains,
# ~12k tokens), *mix* on those chains and 512 SIQA + CommonsenseQA (question, correct choice) pairs (~26k tokens;
# the text mix-mc gates train on). Every method is scored without and with each set on the first 200 GSM8K test
# items (teacher-forced NLL) and the first 500 ARC-Easy and PIQA items, at 0.85 / 0.7 (/ 0.55) of the layers.
# Lines with bridges are named METHOD+bridges and their FLOPs include the bridges; each set has its own results
# files (the plain lines copied in). Greedy-KL, searched again under the g64 bridges, joins in-domain. Resumable.
#   bash scripts/bridges.sh [extra l2a eval flags]      (L2A_BRIDGES_OUT overrides the output directory)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bridge_items.sh"  # DATA, OUT, G (GSM8K items), MC (ARC-Easy, PIQA items)
PAIRS=("$DATA/mc/siqa.jsonl" "$DATA/mc/commonsenseqa.jsonl")
mkdir -p "$OUT"
[ -f "$OUT/smollm2-g64/l2a_bridges.json" ] || l2a fit-bridges --bridges-out "$OUT/smollm2-g64" --out "$OUT/fit.jsonl"
[ -f "$OUT/smollm2-mix/l2a_bridges.json" ] || l2a fit-bridges --bridges-out "$OUT/smollm2-mix" --calib-mc "${PAIRS[@]}" \
    --calib-mc-n 512 --out "$OUT/fit.jsonl"
l2a eval "${G[@]}" --methods dense,angular,l2a --results "$OUT/gsm8k.jsonl" "$@"
l2a eval "${MC[@]}" --methods dense,angular,l2a --results "$OUT/mc.jsonl" "$@"
l2a eval "${G[@]}" --methods greedy-kl --results "$OUT/gsm8k.jsonl" "$@"  # plain: ~13 min of search on 2 cores, once
for b in g64 mix; do
    suffix=$([ $b = g64 ] || echo "_$b")
    for f in gsm8k mc; do [ -f "$OUT/$f$suffix.jsonl" ] || grep -v '+bridges' "$OUT/$f.jsonl" > "$OUT/$f$suffix.jsonl"; done
    l2a eval "${G[@]}" --methods dense,angular,l2a --results "$OUT/gsm8k$suffix.jsonl" --bridges "$OUT/smollm2-$b" "$@"
    [ $b = g64 ] && l2a eval "${G[@]}" --methods greedy-kl --results "$OUT/gsm8k.jsonl" --bridges "$OUT/smollm2-g64" "$@"  # searched under them: ~13 min
    l2a eval "${MC[@]}" --methods dense,angular,l2a --results "$OUT/mc$suffix.jsonl" --bridges "$OUT/smollm2-$b" "$@"
    python "$L2A_ROOT/scripts/bridge_gain.py" "$OUT/gsm8k$suffix.jsonl" "$OUT/mc$suffix.jsonl"
done
