"""Data for the pytest-benchmark suites in benches/ (run them with
`python3 -m pytest benches/ --benchmark-only --benchmark-group-by=group`).

Real traces come from ../shared through the tests' own fixtures (skipped with the reason when
absent); the synthetic ones are the built-in sample, so the benches also run on a fresh machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from streamproc.benchmarks.parse import tagged_turns
from streamproc.records import Row
from streamproc.sources import SAMPLE, iter_rows

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
    return tagged_turns(r for r in iter_rows(real_files) if isinstance(r, Row))


@pytest.fixture(scope="session")
def sample_turns() -> list[tuple[str, str]]:
    """(from, value) of every assistant and tool turn of the built-in (synthetic) sample."""
    return tagged_turns(r for r in iter_rows([SAMPLE]) if isinstance(r, Row))
