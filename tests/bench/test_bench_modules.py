"""The benchmarks are not run by the suite (they print figures), but they must stay runnable: each
imports and has a ``main`` (a rename elsewhere once broke one silently)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHES = sorted(path.stem for path in Path(__file__).parent.glob("bench_*.py"))


def test_there_are_benchmarks():
    assert "bench_issue" in BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_a_benchmark_imports_and_has_a_main(name):
    module = importlib.import_module(f"tests.bench.{name}")
    assert callable(module.main)
