"""Shared fixtures. Conformance tests read ../shared (real traces, tokenizers, a small model);
they skip with the reason when it is absent, since the project itself never needs it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STREAMPROC_SHARED", ROOT.parent / "shared"))
REAL = SHARED / "data" / "real"
MODELS = SHARED / "models"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: this conformance check needs ../shared (set STREAMPROC_SHARED to point elsewhere)")
    return path


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return need(REAL)


@pytest.fixture(scope="session")
def real_row_files(real_dir) -> list[Path]:
    """The real trajectory files in the dataset schema (not the provenance or fragment files)."""
    return sorted(p for p in real_dir.glob("hermes_harness__*.jsonl") if not p.name.endswith(".provenance.jsonl"))


@pytest.fixture(scope="session")
def real_rows(real_row_files) -> list[dict]:
    return [json.loads(line) for p in real_row_files for line in p.open(encoding="utf-8") if line.strip()]


@pytest.fixture(scope="session")
def kimi_fragments(real_dir) -> list[dict]:
    return [json.loads(line) for line in (real_dir / "lambda_kimi_message_fragments.jsonl").open(encoding="utf-8")]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return need(MODELS)
