"""The test SeaweedFS must hold as many buckets as a whole test session creates.

`weed mini` derives its volume count from the free disk and gives every bucket several
volumes, so without `-volume.max` (s3latent.bench.servers) about 55 buckets filled a 50 GB
disk and every later PUT into a new bucket answered 500: a full test run failed in whichever
SeaweedFS tests came late, and on a smaller CI disk sooner.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.seaweed import SeaweedFS


def test_a_fresh_seaweedfs_takes_writes_in_a_hundred_buckets() -> None:
    with SeaweedFS() as weed:
        s3 = weed.client()

        def fill(i: int) -> None:
            bucket = f"capacity-{i:03d}"
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="k", Body=b"x")

        # Several at once: what fills the disk is the number of buckets, not their order,
        # and one at a time each bucket's volume growth is waited for in turn.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fill, range(100)))
        assert len(s3.list_buckets()["Buckets"]) == 100
