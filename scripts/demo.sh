#!/usr/bin/env bash
# Set up .venv (when missing or stale), then run the demo: generate scenes with a planted
# shortcut (the sky), train a shortcut model and a clean one, explain both, audit both and
# write demo-out/report/report.html. Extra arguments go to `sightline demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/python -m sightline.cli.main demo --out demo-out "$@"
