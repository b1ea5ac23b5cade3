#!/usr/bin/env bash
# The project's test command: `bash tests/run.sh [pytest args...]`.
#
# Creates .venv with python3.11 if it is missing, installs the package with its
# test extra (only when pyproject.toml changed since the last install), then runs
# pytest inside the venv. Without a test path it runs the whole suite, 2 workers a core (quietly if no arguments).
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

# The whole suite (no test path given, e.g. `.ci/run`'s `-q --timeout=600`) runs on twice as many pytest-xdist
# workers as cores unless the arguments choose (-n, --numprocesses, --dist, -p no:xdist): the suite mostly waits
# (servers and CLI processes starting, the database syncing), so one worker a core left the cores half idle.
# A module's tests stay on one worker (loadscope), so module-scoped brokers are built once.
whole_suite=true
for arg in "$@"; do
    case "$arg" in
        -n | -n* | --numprocesses* | --dist* | no:xdist) whole_suite=false ;;
        -*) ;;
        *) [[ -e "${arg%%::*}" ]] && whole_suite=false ;;
    esac
done
if [[ $# -eq 0 ]]; then
    set -- -q
fi
if $whole_suite; then
    set -- -n "$(( 2 * $(nproc) ))" --dist loadscope "$@"
fi
# Compiled bytecode (and pytest's rewritten test modules) are cached in the git-ignored __pycache__ folders even
# where the environment says PYTHONDONTWRITEBYTECODE: without the cache every worker and every CLI process the
# tests start compiles again (collection alone took twice the CPU).
unset PYTHONDONTWRITEBYTECODE
exec "$venv/bin/python" -m pytest "$@"
