#!/usr/bin/env bash
# The project's one test command (README: "Running the tests"). Run from the repository root
# after the install steps; uses .venv when present.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
python -m pytest -q "$@"
