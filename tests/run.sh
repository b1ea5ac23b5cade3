#!/usr/bin/env bash
# The project's test command: `bash tests/run.sh [pytest args...]`.
#
# Creates .venv with python3.11 if it is missing, installs the package with its
# test extra (only when pyproject.toml changed since the last install), then runs
# pytest inside the venv. With no arguments it runs the whole suite quietly, on every core.
# The exit code is pytest's (5 = no tests collected).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

python_bin="${BROKER_PYTHON:-python3.11}"
venv="$repo_root/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    if ! command -v "$python_bin" >/dev/null 2>&1; then
        echo "tests/run.sh: $python_bin not found (set BROKER_PYTHON to a Python 3.11 interpreter)" >&2
        exit 2
    fi
    echo "tests/run.sh: creating $venv with $python_bin" >&2
    "$python_bin" -m venv "$venv"
fi

# Reinstall only when pyproject.toml changed: the stamp holds its sha256.
stamp="$venv/.broker-install-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    echo "tests/run.sh: installing -e '.[test]' into $venv" >&2
    install_log="$(mktemp)"
    # Quiet on success; on failure show everything pip said.
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -e '.[test]' >"$install_log" 2>&1; then
        cat "$install_log" >&2
        rm -f "$install_log"
        echo "tests/run.sh: pip install failed" >&2
        exit 3
    fi
    # Warnings from pip still deserve to be seen, except this machine's notes
    # about configured local package folders that do not exist.
    grep -iE '^(WARNING|ERROR)' "$install_log" \
        | grep -vE "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$" >&2 || true
    rm -f "$install_log"
    echo "$want" >"$stamp"
fi

if [[ $# -eq 0 ]]; then
    # Every core (pytest-xdist); a module's tests stay on one worker, so module-scoped brokers are built once.
    set -- -q -n auto --dist loadscope
fi
exec "$venv/bin/python" -m pytest "$@"
