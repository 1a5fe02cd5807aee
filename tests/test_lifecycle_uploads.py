"""The lifecycle worker's AbortIncompleteMultipartUpload also removes an encrypted upload's
key record (docs/encryption.md, "Multipart"), as a client's AbortMultipartUpload does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.inprocess import InProcessGateway, serve_gateway


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with serve_gateway(tmp_path, "[server]\nlifecycle_interval_s = 3600\n") as served:
        yield served


async def test_an_aborted_encrypted_upload_leaves_no_key_record(gw: InProcessGateway) -> None:
    await gw.run(lambda s3: s3.create_bucket(Bucket="lcu"))
    upload = (await gw.run(lambda s3: s3.create_multipart_upload(
        Bucket="lcu", Key="up/a", ServerSideEncryption="AES256")))["UploadId"]
    assert await gw.store.get_upload_record("lcu", upload)
    await gw.run(lambda s3: s3.put_bucket_lifecycle_configuration(
        Bucket="lcu", LifecycleConfiguration={"Rules": [
            {"ID": "mpu", "Prefix": "up/", "Status": "Enabled",
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}))
    worker = gw.store.lifecycle
    worker.now = lambda: datetime.now(UTC) + timedelta(days=3)
    await worker.run_once()
    listed = await gw.run(lambda s3: s3.list_multipart_uploads(Bucket="lcu"))
    assert listed.get("Uploads", []) == []
    assert await gw.store.get_upload_record("lcu", upload) is None
