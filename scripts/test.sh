#!/usr/bin/env bash
# Set up .venv (when missing or stale), check the layering contracts (import-linter: a
# broken one fails the script before any test runs), then run the test suite (with no
# arguments: tests/ and benchmarks/ at the tiny size; with arguments: pytest with those).
# Exit code = lint-imports' when it fails, else pytest's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/lint-imports
# tests/cluster runs the Slurm script on a real single-node Slurm: install it when missing
# (root only; in CI a missing Slurm then fails that test instead of skipping it).
if [ "$(id -u)" -eq 0 ] && ! command -v sbatch >/dev/null 2>&1; then
    bash scripts/install_slurm.sh || echo "scripts/install_slurm.sh failed: the Slurm tests cannot run" >&2
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ "$#" -eq 0 ]; then
    # The whole suite: the tests, and every benchmark once at the tiny size so that none
    # can rot (timings at that size mean nothing; speed is measured by `sightline bench`).
    export SIGHTLINE_BENCH_SIZE="${SIGHTLINE_BENCH_SIZE:-tiny}"
    # Two processes, one test file each at a time (pyproject.toml says why).
    set -- -n 2 --dist loadfile tests benchmarks
fi
exec .venv/bin/python -m pytest "$@"
