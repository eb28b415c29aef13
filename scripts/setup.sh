#!/usr/bin/env bash
# Shared set-up for scripts/test.sh and scripts/demo.sh: make .venv and install the
# project (editable) with its test extra. Re-installs only when pyproject.toml, this
# script or the list of modules changed.
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
# A strict editable install is a tree of links to the modules under build/: editors, type
# checkers and import-linter read it as the installed package sightline, with no finder
# to follow. A module added or removed needs a new tree, hence the module list here.
want=$({ cat pyproject.toml scripts/setup.sh; find engine kernels -name '*.py' | sort; } \
       | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # Before 0.2 the distribution was named "sightline" and installed top-level packages
    # engine and kernels: take it out, so only the sightline import package remains.
    if .venv/bin/python -m pip show --quiet sightline >/dev/null 2>&1; then
        .venv/bin/python -m pip uninstall --quiet --yes sightline
    fi
    .venv/bin/python -m pip install --quiet -e ".[test]" --config-settings editable_mode=strict
    echo "$want" > "$stamp"
fi
