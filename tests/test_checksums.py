"""Checksums against botocore's own classes and published check values."""

from __future__ import annotations

import base64
import itertools
import os

import pytest
from botocore import httpchecksum

from s3latent.s3api.checksums import (
    ALGORITHMS,
    DIGEST_SIZES,
    checksum_b64,
    is_valid_b64,
    new_checksum,
)

BOTOCORE = {
    "crc32": httpchecksum.Crc32Checksum,
    "crc32c": httpchecksum.CrtCrc32cChecksum,
    "crc64nvme": httpchecksum.CrtCrc64NvmeChecksum,
    "sha1": httpchecksum.Sha1Checksum,
    "sha256": httpchecksum.Sha256Checksum,
}

# The standard "123456789" check values (CRC catalogue; NVMe spec for CRC64/NVME).
CHECK_VALUES = {
    "crc32": "cbf43926",
    "crc32c": "e3069283",
    "crc64nvme": "ae8b14860a799888",
    "sha1": "f7c3bc1d808e04732adf679965ccc34ca7ae3441",
    "sha256": "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
}


def test_algorithms_cover_botocore_set() -> None:
    assert set(ALGORITHMS) == set(BOTOCORE)
    assert ALGORITHMS == ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_check_value(algorithm: str) -> None:
    checksum = new_checksum(algorithm)
    checksum.update(b"123456789")
    assert checksum.digest().hex() == CHECK_VALUES[algorithm]
    assert checksum.b64() == base64.b64encode(bytes.fromhex(CHECK_VALUES[algorithm])).decode()
    assert len(checksum.digest()) == DIGEST_SIZES[algorithm]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_botocore_incrementally(algorithm: str) -> None:
    data = os.urandom(300_000)
    ours = new_checksum(algorithm)
    theirs = BOTOCORE[algorithm]()
    # uneven pieces, memoryview and bytearray inputs: the reader feeds all three
    cuts = [0, 1, 7, 4096, 65537, 200_000, len(data)]
    for start, end in itertools.pairwise(cuts):
        piece = data[start:end]
        ours.update(memoryview(piece) if start % 2 else bytearray(piece))
        theirs.update(piece)
    assert ours.b64() == theirs.b64digest()
    assert checksum_b64(algorithm, data) == theirs.b64digest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_input(algorithm: str) -> None:
    assert new_checksum(algorithm).b64() == BOTOCORE[algorithm]().b64digest()


def test_case_insensitive_and_unknown() -> None:
    assert new_checksum("CRC32").b64() == new_checksum("crc32").b64()
    with pytest.raises(ValueError):
        new_checksum("md5")
    with pytest.raises(ValueError):
        new_checksum("xxhash64")


def test_is_valid_b64() -> None:
    assert is_valid_b64("crc32", "y/Q5Jg==")
    assert not is_valid_b64("crc32", "y/Q5Jg")  # missing padding
    assert not is_valid_b64("crc32", "rosUhgp5mIg=")  # 8 bytes: a crc64 value
    assert is_valid_b64("crc64nvme", "rosUhgp5mIg=")
    assert not is_valid_b64("sha1", "not base64!")
    assert not is_valid_b64("sha256", "ü")
    assert not is_valid_b64("md5", "1B2M2Y8AsgTpgAmY7PhCfg==")
