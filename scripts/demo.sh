#!/usr/bin/env bash
# Set up .venv (when missing or stale), then run the demo: train a small CNN on synthetic
# images and write heatmap PNGs to demo-out/. Extra arguments go to `python -m engine.demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/python -m engine.demo --out demo-out "$@"
