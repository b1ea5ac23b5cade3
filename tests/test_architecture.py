"""The tree is the architecture: import contracts (pyproject's [tool.importlinter]), ruff, and the root's shape.

These run with the suite, so `bash tests/run.sh` and CI hold the layering: cli > api > runtime >
use cases | storage | aws | identity > ports > domain > errors, no framework or SDK in the core,
boto3 only in broker/aws/ (and the agent-side SDK).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROOT_MODULES = {"__init__.py", "errors.py", "settings.py", "ports.py"}


def _run(tool: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    executable = BIN / tool
    if not executable.exists():
        pytest.fail(f"{tool} is not installed in the test environment (pyproject's test extra pins it)")
    return subprocess.run([str(executable), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold() -> None:
    result = _run("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "--no-cache", "broker", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_contracts_and_configuration_sit_at_the_root() -> None:
    loose = {p.name for p in (REPO / "broker").iterdir() if p.suffix == ".py"} - ROOT_MODULES
    assert not loose, f"modules loose at broker/ root: {sorted(loose)} (see README's layout paragraph)"


def test_a_layer_violation_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts can fail: the domain importing boto3 or the API, or a cycle, is reported."""
    shutil.copytree(REPO / "broker", tmp_path / "broker", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "broker" / "domain" / "leak.py").write_text("import boto3\nfrom broker.api import app\n")
    # A cycle, even one hidden in a function body, is reported too.
    (tmp_path / "broker" / "cli" / "loop_a.py").write_text("from broker.cli import loop_b\n")
    (tmp_path / "broker" / "cli" / "loop_b.py").write_text("def f():\n    from broker.cli import loop_a\n")
    result = _run("lint-imports", "--no-cache", cwd=tmp_path)
    assert result.returncode != 0
    assert "broker.domain.leak -> boto3" in result.stdout
    assert "broker.domain.leak -> broker.api" in result.stdout
    assert "No cycles are allowed in broker.cli." in result.stdout
