"""Latent objects and versioning, with real clients (boto3 and the AWS CLI), both backends.

On the local backend versioned buckets are converted in place (a version keeps its ID); on
the S3 backend by stand-ins (docs/versioning-design.md §3b). What these
tests pin (docs/versioning.md):
- a pair converted *before* versioning was enabled keeps reading exactly, as the `null`
  versions: after an overwrite, through a restore by copy, and after its container version is
  deleted for good (the sidecar stub stays readable from the keep copy);
- no version appears that the client did not write;
- a retention-locked image survives DELETE and sweeps, plain and readable.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3latent.executables import require_executable
from tests import test_latent_objects as _latent
from tests.gateway import GatewayProcess
from tests.test_latent_objects import make_pair, wait_latent

tiny_model = _latent.tiny_model
latent_gateway = _latent.latent_gateway
s3l = _latent.s3l
lbucket = _latent.lbucket

SIDE = ".latent.safetensors"
AWS = require_executable("aws", "awscli")


def _md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _read(s3: Any, bucket: str, key: str, **kw: Any) -> tuple[bytes, dict[str, Any]]:
    got = s3.get_object(Bucket=bucket, Key=key, **kw)
    return got["Body"].read(), got


def _versions(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in resp.get("Versions", []) + resp.get("DeleteMarkers", [])
            if v["Key"] == key]


def _converted_pair(s3: Any, bucket: str, tiny_model: dict[str, str], seed: int
                    ) -> tuple[bytes, bytes]:
    """Upload a pair, wait for it to be latent; (image rendition, sidecar) as served."""
    image, sidecar, _ = make_pair(tiny_model, seed=seed)
    s3.put_object(Bucket=bucket, Key="img.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="img.png" + SIDE, Body=sidecar)
    wait_latent(s3, bucket, "img.png")
    wait_latent(s3, bucket, "img.png" + SIDE)
    return _read(s3, bucket, "img.png")[0], _read(s3, bucket, "img.png" + SIDE)[0]


def test_a_pair_converted_before_versioning_keeps_reading_exactly(
        s3l: Any, lbucket: str, tiny_model: dict[str, str]) -> None:
    rendition, side = _converted_pair(s3l, lbucket, tiny_model, seed=61)
    s3l.put_bucket_versioning(Bucket=lbucket, VersioningConfiguration={"Status": "Enabled"})
    # Current, and by version "null": the same bytes, ETag and size as before.
    for kw in ({}, {"VersionId": "null"}):
        data, got = _read(s3l, lbucket, "img.png", **kw)
        assert data == rendition and got["ETag"] == _md5(rendition)
        assert got["VersionId"] == "null"
        head = s3l.head_object(Bucket=lbucket, Key="img.png", **kw)
        assert head["ContentLength"] == len(rendition) and head["ETag"] == _md5(rendition)
    listed = _versions(s3l, lbucket, "img.png")
    assert [(v["VersionId"], v["Size"], v["ETag"]) for v in listed] == \
        [("null", len(rendition), _md5(rendition))]

    # Overwrite: a new plain version on top; the latent null version stays readable, and so
    # does the sidecar stub that reads from it. Nothing is materialised.
    other, _, _ = make_pair(tiny_model, seed=62)
    new = s3l.put_object(Bucket=lbucket, Key="img.png", Body=other,
                         ContentType="image/png")["VersionId"]
    assert _read(s3l, lbucket, "img.png")[0] == other
    assert _read(s3l, lbucket, "img.png", VersionId="null")[0] == rendition
    assert _read(s3l, lbucket, "img.png" + SIDE)[0] == side
    assert [v["VersionId"] for v in _versions(s3l, lbucket, "img.png" + SIDE)] == ["null"]
    ranged = s3l.get_object(Bucket=lbucket, Key="img.png", VersionId="null", Range="bytes=0-9")
    assert ranged["Body"].read() == rendition[:10]

    # Restore by copy: a new version with the old version's bytes and ETag.
    restored = s3l.copy_object(Bucket=lbucket, Key="img.png", CopySource={
        "Bucket": lbucket, "Key": "img.png", "VersionId": "null"})
    assert restored["CopySourceVersionId"] == "null"
    data, got = _read(s3l, lbucket, "img.png")
    assert data == rendition and got["ETag"] == _md5(rendition)
    assert {v["VersionId"] for v in _versions(s3l, lbucket, "img.png")} == \
        {"null", new, restored["VersionId"]}

    # The container version deleted for good: the sidecar stub still reads, byte for byte.
    s3l.delete_object(Bucket=lbucket, Key="img.png", VersionId="null")
    assert _read(s3l, lbucket, "img.png" + SIDE)[0] == side
    assert {v["VersionId"] for v in _versions(s3l, lbucket, "img.png")} == \
        {new, restored["VersionId"]}


def test_new_pairs_in_a_versioned_bucket(
        latent_gateway: GatewayProcess, s3l: Any, lbucket: str,
        tiny_model: dict[str, str]) -> None:
    """Converted keeping the client's version ID, size and ETag (the unversioned rule), no
    version added: in place on the local backend, by stand-ins on SeaweedFS."""
    s3l.put_bucket_versioning(Bucket=lbucket, VersioningConfiguration={"Status": "Enabled"})
    image, sidecar, _ = make_pair(tiny_model, seed=63)
    vid = s3l.put_object(Bucket=lbucket, Key="p.png", Body=image,
                         ContentType="image/png")["VersionId"]
    svid = s3l.put_object(Bucket=lbucket, Key="p.png" + SIDE, Body=sidecar)["VersionId"]
    head = wait_latent(s3l, lbucket, "p.png")
    side = wait_latent(s3l, lbucket, "p.png" + SIDE)
    data, got = _read(s3l, lbucket, "p.png", VersionId=vid)
    assert head["VersionId"] == got["VersionId"] == vid
    assert head["ContentLength"] == len(data) == len(image)
    assert head["ETag"] == got["ETag"] == _md5(data)
    assert side["VersionId"] == svid and side["ContentLength"] == len(sidecar)
    assert [(v["VersionId"], v["Size"], v["ETag"])
            for v in _versions(s3l, lbucket, "p.png")] == [(vid, len(image), _md5(data))]
    assert [v["VersionId"] for v in _versions(s3l, lbucket, "p.png" + SIDE)] == [svid]


# -- the AWS CLI -------------------------------------------------------------------

def _aws(gateway: GatewayProcess, home: Path, *args: str,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    (home / "aws-config").write_text("[default]\nregion = us-east-1\n")
    result = subprocess.run([AWS, "--endpoint-url", gateway.endpoint, *args],
                            env=gateway.cli_env(home), capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_cli_versioned_overwrite_and_restore_of_a_converted_image(
        latent_gateway: GatewayProcess, s3l: Any, lbucket: str, tiny_model: dict[str, str],
        home: Path, tmp_path: Path) -> None:
    rendition, _ = _converted_pair(s3l, lbucket, tiny_model, seed=64)
    run = lambda *a, **k: _aws(latent_gateway, home, *a, **k)  # noqa: E731
    run("s3api", "put-bucket-versioning", "--bucket", lbucket,
        "--versioning-configuration", "Status=Enabled")
    other = tmp_path / "other.png"
    other.write_bytes(make_pair(tiny_model, seed=65)[0])
    run("s3", "cp", str(other), f"s3://{lbucket}/img.png")
    versions = json.loads(run("s3api", "list-object-versions", "--bucket", lbucket,
                              "--prefix", "img.png.", "--output", "json").stdout or "{}")
    listed = json.loads(run("s3api", "list-object-versions", "--bucket", lbucket,
                            "--prefix", "img.png", "--output", "json").stdout)["Versions"]
    mine = [v for v in listed if v["Key"] == "img.png"]
    assert len(mine) == 2 and mine[1]["VersionId"] == "null"
    assert mine[1]["ETag"] == _md5(rendition) and mine[1]["Size"] == len(rendition)
    assert len(versions.get("Versions", [])) == 1  # the sidecar: still one version
    head = json.loads(run("s3api", "head-object", "--bucket", lbucket, "--key", "img.png",
                          "--version-id", "null").stdout)
    assert head["ETag"] == mine[1]["ETag"] and head["ContentLength"] == mine[1]["Size"]
    run("s3api", "copy-object", "--bucket", lbucket, "--key", "img.png",
        "--copy-source", f"{lbucket}/img.png?versionId=null")
    out = tmp_path / "restored.png"
    run("s3", "cp", f"s3://{lbucket}/img.png", str(out))
    assert out.read_bytes() == rendition


def test_cli_pair_converted_in_a_versioned_bucket_overwrite_and_restore(
        latent_gateway: GatewayProcess, s3l: Any, lbucket: str, tiny_model: dict[str, str],
        home: Path, tmp_path: Path) -> None:
    """Versioning Enabled first, then the pair: once converted (in place on the local
    backend, by stand-ins on SeaweedFS: skipped there before) the version the client
    uploaded lists and reads with its ID; overwrite and restore by copy."""
    run = lambda *a, **k: _aws(latent_gateway, home, *a, **k)  # noqa: E731
    run("s3api", "put-bucket-versioning", "--bucket", lbucket,
        "--versioning-configuration", "Status=Enabled")
    image, sidecar, _ = make_pair(tiny_model, seed=67)
    (tmp_path / "i.png").write_bytes(image)
    (tmp_path / "s").write_bytes(sidecar)
    put = json.loads(run("s3api", "put-object", "--bucket", lbucket, "--key", "img.png",
                         "--body", str(tmp_path / "i.png"), "--content-type",
                         "image/png").stdout)
    run("s3api", "put-object", "--bucket", lbucket, "--key", "img.png" + SIDE,
        "--body", str(tmp_path / "s"))
    wait_latent(s3l, lbucket, "img.png")
    wait_latent(s3l, lbucket, "img.png" + SIDE)
    vid = put["VersionId"]
    listed = json.loads(run("s3api", "list-object-versions", "--bucket", lbucket,
                            "--prefix", "img.png", "--output", "json").stdout)["Versions"]
    mine = [v for v in listed if v["Key"] == "img.png"]
    assert [v["VersionId"] for v in mine] == [vid] and mine[0]["Size"] == len(image)
    assert len(listed) == 2  # the image's and the sidecar's one version each
    head = json.loads(run("s3api", "head-object", "--bucket", lbucket, "--key", "img.png",
                          "--version-id", vid).stdout)
    assert head["VersionId"] == vid and head["ETag"] == mine[0]["ETag"]
    assert head["ContentLength"] == len(image)
    out = tmp_path / "v.png"
    run("s3api", "get-object", "--bucket", lbucket, "--key", "img.png", "--version-id", vid,
        str(out))
    rendition = out.read_bytes()
    assert _md5(rendition) == head["ETag"]
    other = tmp_path / "other.png"
    other.write_bytes(make_pair(tiny_model, seed=68)[0])
    run("s3", "cp", str(other), f"s3://{lbucket}/img.png")
    run("s3api", "copy-object", "--bucket", lbucket, "--key", "img.png",
        "--copy-source", f"{lbucket}/img.png?versionId={vid}")
    back = tmp_path / "restored.png"
    run("s3", "cp", f"s3://{lbucket}/img.png", str(back))
    assert back.read_bytes() == rendition
    ids = [v["VersionId"] for v in _versions(s3l, lbucket, "img.png")]
    assert len(ids) == 3 and ids[-1] == vid


def test_cli_retention_locked_image_survives_delete_and_sweeps(
        latent_gateway: GatewayProcess, s3l: Any, tiny_model: dict[str, str],
        home: Path, tmp_path: Path) -> None:
    run = lambda *a, **k: _aws(latent_gateway, home, *a, **k)  # noqa: E731
    bucket = f"lock-{uuid.uuid4().hex[:10]}"
    run("s3api", "create-bucket", "--bucket", bucket, "--object-lock-enabled-for-bucket")
    image, sidecar, _ = make_pair(tiny_model, seed=66)
    (tmp_path / "i.png").write_bytes(image)
    (tmp_path / "s").write_bytes(sidecar)
    until = (datetime.now(UTC) + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    put = json.loads(run("s3api", "put-object", "--bucket", bucket, "--key", "i.png",
                         "--body", str(tmp_path / "i.png"), "--content-type", "image/png",
                         "--object-lock-mode", "COMPLIANCE",
                         "--object-lock-retain-until-date", until).stdout)
    vid = put["VersionId"]
    run("s3api", "put-object", "--bucket", bucket, "--key", "i.png" + SIDE,
        "--body", str(tmp_path / "s"))
    refused = run("s3api", "delete-object", "--bucket", bucket, "--key", "i.png",
                  "--version-id", vid, check=False)
    assert refused.returncode != 0 and "AccessDenied" in refused.stderr
    bypass = run("s3api", "delete-object", "--bucket", bucket, "--key", "i.png",
                 "--version-id", vid, "--bypass-governance-retention", check=False)
    assert bypass.returncode != 0 and "AccessDenied" in bypass.stderr  # COMPLIANCE
    marker = json.loads(run("s3api", "delete-object", "--bucket", bucket,
                            "--key", "i.png").stdout)
    assert marker["DeleteMarker"] is True
    time.sleep(3.0)  # sweeps run every second: none may touch the locked version
    out = tmp_path / "back.png"
    run("s3api", "get-object", "--bucket", bucket, "--key", "i.png", "--version-id", vid,
        str(out))
    assert out.read_bytes() == image
    head = s3l.head_object(Bucket=bucket, Key="i.png", VersionId=vid)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
    assert head["ObjectLockMode"] == "COMPLIANCE"
    listed = json.loads(run("s3api", "list-object-versions", "--bucket", bucket).stdout)
    assert [v["VersionId"] for v in listed["Versions"] if v["Key"] == "i.png"] == [vid]
    # Once the date has passed the version can go, and the bucket with it.
    time.sleep(max(0.0, (datetime.fromisoformat(until.replace("Z", "+00:00"))
                         - datetime.now(UTC)).total_seconds() + 1))
    run("s3api", "delete-object", "--bucket", bucket, "--key", "i.png", "--version-id", vid)
    for v in listed["Versions"] + listed.get("DeleteMarkers", []):
        if v["VersionId"] != vid:
            run("s3api", "delete-object", "--bucket", bucket, "--key", v["Key"],
                "--version-id", v["VersionId"])
    try:
        s3l.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        raise AssertionError(f"bucket not emptied: {exc}") from exc
