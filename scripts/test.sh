#!/usr/bin/env bash
# Run the test suite in the repo's venv (created/updated on demand). Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$L2A_ROOT"
python -m pytest -q tests "$@"
