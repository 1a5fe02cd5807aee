"""A real SeaweedFS S3 server for tests: the package's one launcher plus a boto3 client."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from s3latent.bench.servers import SeaweedServer


class SeaweedFS(SeaweedServer):
    """`weed mini` on free loopback ports (s3latent.bench.servers), with the tests' key."""

    def __init__(self) -> None:
        super().__init__(access_key="weed-test-key", secret_key="weed-test-secret")

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=BotoConfig(retries={"max_attempts": 1},
                                              connect_timeout=2, read_timeout=10))

    def __enter__(self) -> SeaweedFS:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        """SIGKILL: a test's store is thrown away with its directory right after, so
        nothing is lost, and SIGTERM cost ~2.5 s of shutdown per store (15 s, the whole
        grace, for one that was stopped and continued)."""
        self.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole session; tests use their own buckets."""
    with SeaweedFS() as weed:
        yield weed
