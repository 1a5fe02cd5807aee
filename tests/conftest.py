"""Shared fixtures: a real gateway process over each backend, and boto3 clients."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3latent.backends.local import LocalBackend
from s3latent.backends.s3 import S3Backend
from tests.gateway import GatewayProcess, on_backend
from tests.seaweed import SeaweedFS, seaweedfs  # noqa: F401 - session fixture re-exported

REPO = Path(__file__).resolve().parents[1]
TAEF2_DIR = REPO.parent / "shared" / "models" / "taef2"


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A started backend of each kind, for tests of the backend protocol itself (a test
    module's own `backend` fixture takes precedence)."""
    if request.param == "local":
        b: Any = LocalBackend(tmp_path / "data")
    else:
        weed: SeaweedFS = request.getfixturevalue("seaweedfs")
        b = S3Backend(weed.endpoint, weed.access_key, weed.secret_key)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(scope="session", params=["local", "seaweedfs"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayProcess]:
    """The gateway on the embedded local backend, and on a real S3 store (SeaweedFS)."""
    workdir = tmp_path_factory.mktemp(f"gw-{request.param}")
    proc = on_backend(request, workdir)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def s3(gateway: GatewayProcess) -> Any:
    """boto3 with the SDK's default checksum and chunking settings."""
    return gateway.client()


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    _empty_and_delete(s3, name)


def _empty_and_delete(s3: Any, name: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        s3.delete_bucket(Bucket=name)
    except Exception:  # best-effort cleanup must not hide the test result
        pass
