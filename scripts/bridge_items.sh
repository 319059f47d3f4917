# The items every bridge study scores (sourced by scripts/bridges*.sh and scripts/gates_*bridged.sh, after venv.sh):
# the first 200 GSM8K test items by teacher-forced NLL at 0.85 / 0.7 / 0.55 of the layers (G), and the first 500
# ARC-Easy and PIQA items at 0.85 / 0.7 (MC), SmolLM2-135M in fp32. Callers add --methods, --bridges, --results.
DATA="${L2A_DATA_ROOT:-$L2A_ROOT/../shared/data}"
OUT="${L2A_BRIDGES_OUT:-$L2A_ROOT/runs/bridges}"
G=(--model smollm2-135m --dtype float32 --task gsm8k-loglik --data "$DATA/gsm8k/test.jsonl" --limit 200
   --budgets 0.85,0.7,0.55 --axes layers --seeds 1)
MC=(--model smollm2-135m --dtype float32 --task mc --data "$DATA/mc/arc_easy.jsonl" --data "$DATA/mc/piqa.jsonl"
    --limit 500 --budgets 0.85,0.7 --axes layers --seeds 1)
