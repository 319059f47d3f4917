#!/usr/bin/env bash
# Learned gates on a larger model (Qwen2.5-Coder-0.5B, 24 layers), scored on the items and next to the static lines of
# scripts/pareto_scale.sh (run that first: this appends to its results file). The recipe is the embedded default's
# best out-of-domain one (`--warm-domains`, docs/results/recipes.md): one greedy-KL order per training source (16
# GSM8K chains; 16 SIQA + CommonsenseQA pairs), the router fit so each prompt starts from its own source's order,
# then half of each step on those pairs. 100 steps instead of 300 (~22 s a step on 2 fp32 cores, after ~35 min of
# search). The warm start untrained is scored too. Then GSM8K by teacher-forced NLL (first 200 test items) for
# dense, the gates and the two static methods; and greedy-kl searched on the gates' own sources (16 GSM8K chains
# + 16 of the same pairs; ~50 min of search), the static baseline with the same data access, on both tasks.
# Then exact mode for both artifacts, the untrained start on GSM8K, and every line of each data file timed again
# together (scripts/retime_lines.py), for the comparison at equal measured latency.
# The budget calibration is fit on held-out GSM8K prompts and MC pairs together (the default since 2026-12-07;
# records in docs/results/scale/*_mixcal.jsonl); the first records (qwen05_mc.jsonl's l2a lines) were fit on
# GSM8K alone, which `--no-calib-mix` in RECIPE reproduces.
# Resumable: rerun to continue.
#   bash scripts/gates_scale.sh [extra l2a eval flags]      (L2A_SCALE_MODEL, L2A_SCALE_STEPS override)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
MODEL="${L2A_SCALE_MODEL:-qwen2.5-coder-0.5b}"
OUT="${L2A_SCALE_OUT:-$L2A_ROOT/runs/scale-$MODEL}"
GATES="$OUT/gates-domains"
mkdir -p "$OUT"
RECIPE=(--model "$MODEL" --dtype float32 --seed 0 --max-len 160 --warm-start greedy-kl --warm-scale 3 --estimator score
    --samples 4 --dense-at-full --dual signed --noise-end 0.1 --warm-text 16 --warm-domains --train-text 0.5
    --mix-mc "$DATA/mc/siqa.jsonl" "$DATA/mc/commonsenseqa.jsonl")
SWEEP=(--budgets 1.0,0.85,0.7 --axes layers --seeds 1)
FAIR=(--methods greedy-kl --calib-search 16 --calib-mc "$DATA/mc/siqa.jsonl" "$DATA/mc/commonsenseqa.jsonl" --calib-mc-search 16)
MC=(--task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl" --limit 500 "${SWEEP[@]}")
l2a train "${RECIPE[@]}" --gates-out "$GATES" --steps "${L2A_SCALE_STEPS:-100}" --lr 1e-3 --out "$OUT/train.jsonl"
l2a eval --model "$MODEL" --gates "$GATES" "${MC[@]}" --methods l2a --results "$OUT/mc.jsonl" "$@"
# The warm start alone (the same searched orders, copied; one step at lr 1e-9 leaves the router as fit, then
# the calibration), scored into a copy of the static lines.
mkdir -p "$OUT/gates-untrained" && cp "$GATES/warm_start.json" "$OUT/gates-untrained/"
l2a train "${RECIPE[@]}" --gates-out "$OUT/gates-untrained" --steps 1 --lr 1e-9 --out "$OUT/train_untrained.jsonl"
[ -f "$OUT/mc_untrained.jsonl" ] || grep -v '"method": "l2a"' "$OUT/mc.jsonl" > "$OUT/mc_untrained.jsonl"
l2a eval --model "$MODEL" --gates "$OUT/gates-untrained" "${MC[@]}" --methods l2a \
    --results "$OUT/mc_untrained.jsonl" "$@"
l2a eval --model "$MODEL" --gates "$GATES" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200 \
    "${SWEEP[@]}" --methods dense,l2a,angular,block-influence --results "$OUT/gsm8k.jsonl" "$@"
l2a eval --model "$MODEL" "${MC[@]}" "${FAIR[@]}" --results "$OUT/mc.jsonl" "$@"
l2a eval --model "$MODEL" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200 "${SWEEP[@]}" "${FAIR[@]}" \
    --results "$OUT/gsm8k.jsonl" "$@"
# greedy-kl searched on GSM8K alone (the static calibration's first 16 chains), apart from the lines above.
[ -f "$OUT/gsm8k_gsm8k-only.jsonl" ] || grep '"method": "dense"' "$OUT/gsm8k.jsonl" > "$OUT/gsm8k_gsm8k-only.jsonl"
l2a eval --model "$MODEL" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200 "${SWEEP[@]}" --methods greedy-kl \
    --calib-search 16 --results "$OUT/gsm8k_gsm8k-only.jsonl" "$@"
# Exact mode (every prompt at the static methods' layer count, its own set) for both artifacts, and the untrained
# warm start on GSM8K (into a copy of the static lines).
l2a eval --model "$MODEL" --gates "$GATES" "${MC[@]}" --methods l2a-exact --results "$OUT/mc.jsonl" "$@"
l2a eval --model "$MODEL" --gates "$OUT/gates-untrained" "${MC[@]}" --methods l2a-exact --results "$OUT/mc_untrained.jsonl" "$@"
l2a eval --model "$MODEL" --gates "$GATES" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200 "${SWEEP[@]}" \
    --methods l2a-exact --results "$OUT/gsm8k.jsonl" "$@"
[ -f "$OUT/gsm8k_untrained.jsonl" ] || grep -v '"method": "l2a' "$OUT/gsm8k.jsonl" > "$OUT/gsm8k_untrained.jsonl"
l2a eval --model "$MODEL" --gates "$OUT/gates-untrained" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200 \
    "${SWEEP[@]}" --methods l2a,l2a-exact --results "$OUT/gsm8k_untrained.jsonl" "$@"
# Latency: every line of a data file, trained and untrained gates and the static lines under both calibrations,
# timed again together (3 interleaved rounds on the first 40 items, median), so `l2a report` and
# `python scripts/scoreboard.py --x seconds` compare at equal measured latency.
for d in mc/arc_easy mc/piqa; do
    python "$L2A_ROOT/scripts/retime_lines.py" --model "$MODEL" --task mc --data "$DATA/$d.jsonl" \
        "$OUT/mc.jsonl:$GATES" "$OUT/mc_untrained.jsonl:$OUT/gates-untrained"
done
python "$L2A_ROOT/scripts/retime_lines.py" --model "$MODEL" --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" \
    "$OUT/gsm8k.jsonl:$GATES" "$OUT/gsm8k_untrained.jsonl:$OUT/gates-untrained"
for f in mc mc_untrained gsm8k gsm8k_untrained; do l2a report "$OUT/$f.jsonl" --out-dir "$OUT/${f}_report"; done
