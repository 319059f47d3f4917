#!/usr/bin/env bash
# Run the demo (`l2a demo`) in the repo's venv (created/updated on demand). Extra args go to the demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
l2a demo "$@"
