#!/usr/bin/env bash
# The methods of the issue that `scripts/pareto.sh` leaves out, on the same items: even-spaced, drop-last and
# random (2 seeds, averaged) on the layer axis, static-groups on the KV-group axis (2 of 3 groups per layer),
# with dense as the reference. Resumable: rerun to continue (2026-12-07 ran all of it, in two sessions).
#   bash scripts/pareto_rest.sh [extra l2a eval flags]   (the README's figures: fp32, the default dtype)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_PARETO_OUT:-$L2A_ROOT/runs/pareto-rest}"
mkdir -p "$OUT"
MC=(--task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl" --data "$DATA/mc/winogrande.jsonl" --limit 500)
l2a eval "${MC[@]}" --budgets 1.0,0.85,0.7,0.55 --axes layers --methods dense,even-spaced,drop-last,random --seeds 2 \
    --results "$OUT/mc.jsonl" "$@"
l2a eval "${MC[@]}" --budgets 0.7 --axes heads --methods static-groups --seeds 1 --results "$OUT/mc_heads.jsonl" "$@"
l2a eval --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 1319 --budgets 1.0,0.85,0.7,0.55 --axes layers \
    --methods dense,drop-last,even-spaced,random --seeds 2 --results "$OUT/gsm8k.jsonl" "$@"
for f in mc mc_heads gsm8k; do l2a report "$OUT/$f.jsonl" --out-dir "$OUT/${f}_report"; done
