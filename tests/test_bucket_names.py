"""Bucket naming rules (names.check_bucket_name), the IP-address rule in particular."""

from __future__ import annotations

import pytest

from s3latent.errors import S3Error
from s3latent.s3api.names import check_bucket_name


@pytest.mark.parametrize("name", ["192.168.5.4", "0.0.0.0", "10.1.2.3", "255.255.255.255"])
def test_ip_address_names_are_refused(name: str) -> None:
    with pytest.raises(S3Error) as exc:
        check_bucket_name(name)
    assert exc.value.code == "InvalidBucketName"


@pytest.mark.parametrize("name", ["s3latent-bench", "1.2.3", "256.1.1.1", "1.2.3.4.5",
                                  "01.2.3.4", "123", "my.bucket.2"])
def test_other_names_pass(name: str) -> None:
    check_bucket_name(name)
