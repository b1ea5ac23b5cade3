#!/usr/bin/env bash
# Quick start: `bash deploy/local/quickstart.sh [broker dev flags...]`
#
# On a fresh machine with Python 3.11 and pip: creates .venv, installs the broker with
# its local extra (moto, the FAKE AWS endpoint), and runs `broker dev`: the API on
# 127.0.0.1:8080, SQLite and keys under .broker/, demo templates from scopes/, and a
# self-check that issues a credential and uses it. Ctrl-C stops everything.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
python_bin="${BROKER_PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [[ ! -x .venv/bin/python ]]; then
    echo "quickstart: creating .venv with $python_bin" >&2
    "$python_bin" -m venv .venv
fi
stamp=.venv/.broker-local-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "quickstart: installing the broker into .venv (the first run takes a few minutes)" >&2
    install_log="$(mktemp)"
    if ! .venv/bin/python -m pip install --disable-pip-version-check -q -e '.[local]' >"$install_log" 2>&1; then
        cat "$install_log" >&2
        echo "quickstart: pip install failed" >&2
        exit 3
    fi
    rm -f "$install_log"
    echo "$want" >"$stamp"
fi
exec .venv/bin/broker dev "$@"
