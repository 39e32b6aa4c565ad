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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, headless, driven by playwright: the report page as a browser runs it."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to test the web page")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def s3():
    """A real S3 endpoint on this machine (moto's server), found by every process started after
    it (Ray workers, CLI subprocesses) through AWS_ENDPOINT_URL. Yields a function that uploads
    bytes and returns the object's s3:// URI."""
    moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto: pip install 'moto[server]'")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_DEFAULT_REGION="us-east-1")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket="traces")

    def put(key: str, data: bytes) -> str:
        client.put_object(Bucket="traces", Key=key, Body=data)
        return f"s3://traces/{key}"

    yield put
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
