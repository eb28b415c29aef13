#!/usr/bin/env bash
# Shared set-up for scripts/test.sh and scripts/demo.sh: make .venv and install the
# project (editable) with its test extra. Re-installs only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pick_python() {
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "sightline needs Python >= 3.11: none found on PATH (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

if [ ! -x .venv/bin/python ]; then
    python_bin=$(pick_python)
    "$python_bin" -m venv .venv
fi

stamp=.venv/.sightline-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # Before 0.2 the distribution was named "sightline" and installed top-level packages
    # engine and kernels: take it out, so only the sightline import package remains.
    if .venv/bin/python -m pip show --quiet sightline >/dev/null 2>&1; then
        .venv/bin/python -m pip uninstall --quiet --yes sightline
    fi
    .venv/bin/python -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi
