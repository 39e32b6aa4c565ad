"""Data for the pytest-benchmark suites in benches/ (run them with
`python3 -m pytest benches/ --benchmark-only --benchmark-group-by=group`).

Each bench is a thin pytest-benchmark wrapper: the inputs and the contenders it times are those
of `streamproc bench` (streamproc/benchmarks/), read through the same `context`. Real traces come
from ../shared through the tests' own fixtures (skipped with the reason when absent); the
synthetic ones are the built-in sample, so the benches also run on a fresh machine. The big
synthetic files are made once by `benchmarks.synthetic_file` (sizes set by STREAMPROC_BENCH_*_ROWS).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from streamproc.benchmarks import context
from streamproc.benchmarks.parse import tagged_turns

# The tests' conftest knows where ../shared is and how to skip without it: load it, don't copy it.
_spec = importlib.util.spec_from_file_location("_streamproc_tests_conftest", Path(__file__).parents[1] / "tests" / "conftest.py")
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)


@pytest.fixture(scope="session")
def real_files() -> list[Path]:
    real = _tests.need(_tests.REAL)
    return sorted(p for p in real.glob("hermes_harness__*.jsonl") if not p.name.endswith(".provenance.jsonl"))


@pytest.fixture(scope="session")
def real_turns(real_files) -> list[tuple[str, str]]:
    """(from, value) of every assistant and tool turn of the real trajectories."""
    return tagged_turns(context(real_files).rows())


@pytest.fixture(scope="session")
def sample_rows() -> list:
    """The rows of the built-in (synthetic) sample."""
    return context().rows()


@pytest.fixture(scope="session")
def sample_turns() -> list[tuple[str, str]]:
    """(from, value) of every assistant and tool turn of the built-in (synthetic) sample."""
    return tagged_turns(context().rows())
