#!/usr/bin/env bash
# Gates trained on mixed text with the bridges tuned on mixed text (SmolLM2-135M, fp32): the input-aware recipe of
# docs/results/recipes.md ("domains", lr 3e-4: one greedy-KL order per source, half of each step on SIQA +
# CommonsenseQA pairs) with the bridges of scripts/bridges_mixtuned.sh running in training (`l2a train --bridges`),
# 200 steps. Then the gates with those bridges on the items of scripts/bridges_mixtuned.sh (ARC-Easy and PIQA, in
# neither the bridges' nor the gates' training text, and GSM8K test), beside its angular lines (copied in) and, on
# GSM8K, greedy-KL searched under the same bridges; `l2a report` on each. Run scripts/bridges_mixtuned.sh first. Resumable.
#   bash scripts/gates_mixbridged.sh [extra l2a eval flags]      (L2A_BRIDGES_OUT as in scripts/bridges.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bridge_items.sh"  # DATA, OUT, G (GSM8K items), MC (ARC-Easy, PIQA items)
M="$OUT/smollm2-mixtuned"
GATES="$OUT/gates-mixbridged"
PAIRS=("$DATA/mc/siqa.jsonl" "$DATA/mc/commonsenseqa.jsonl")
[ -f "$GATES/l2a_config.json" ] || l2a train --gates-out "$GATES" --bridges "$M" --dtype float32 --steps 200 \
    --seed 0 --max-len 160 --lr 3e-4 --warm-start greedy-kl --warm-scale 3 --estimator score --samples 4 \
    --dense-at-full --dual signed --noise-end 0.1 --warm-text 16 --warm-domains --train-text 0.5 --mix-mc "${PAIRS[@]}" \
    --out "$OUT/fit.jsonl"
for f in gsm8k mc; do
  [ -f "$OUT/${f}_gates_mixbridged.jsonl" ] || grep -v '"method": "l2a' "$OUT/${f}_mixtuned.jsonl" > "$OUT/${f}_gates_mixbridged.jsonl"
done
l2a eval "${MC[@]}" --methods l2a --gates "$GATES" --bridges "$M" --results "$OUT/mc_gates_mixbridged.jsonl" "$@"
l2a eval "${G[@]}" --methods l2a --gates "$GATES" --bridges "$M" --results "$OUT/gsm8k_gates_mixbridged.jsonl" "$@"
# the strongest in-domain static line under the same bridges: greedy-KL searched under them (~20 min)
l2a eval "${G[@]}" --methods greedy-kl --bridges "$M" --results "$OUT/gsm8k_gates_mixbridged.jsonl" "$@"
for f in mc gsm8k; do l2a report "$OUT/${f}_gates_mixbridged.jsonl" --out-dir "$OUT/${f}_gates_mixbridged_report" --no-plots; done
