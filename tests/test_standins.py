"""Stand-ins on SeaweedFS (docs/versioning.md, design §3b): a pair converted in a versioned
bucket on the S3 backend keeps the client's version IDs, the unversioned rule's size and
ETag, adds no version, and stores one container and one stub; crashes heal, a permanent
delete during conversion brings nothing back, forged claims are not believed.

Each test runs gateway processes (boto3) over the session's SeaweedFS; the backend is
also read directly (boto3 to SeaweedFS) to count what is stored.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests import test_latent_objects as _latent
from tests.gateway import GatewayProcess
from tests.test_latent_objects import _config, make_pair, wait_latent

tiny_model = _latent.tiny_model
SIDE = ".latent.safetensors"


def _md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _gateway(weed: Any, workdir: Path, tiny_model: dict[str, str],
             env: dict[str, str] | None = None) -> GatewayProcess:
    """A gateway over the session's SeaweedFS (stand-in conversion is on by default)."""
    return GatewayProcess(weed.endpoint, workdir, config=_config(tiny_model),
                          backend_keys=(weed.access_key, weed.secret_key),
                          env=env)


@pytest.fixture
def sgw(seaweedfs: Any, tiny_model: dict[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Per test: a gateway left running would sweep the crash tests' buckets as a second
    # node, converting their pair before the crashing one reaches its step.
    proc = _gateway(seaweedfs, tmp_path_factory.mktemp("standins"), tiny_model)
    proc.start()
    yield proc
    proc.stop()


def _bucket(s3: Any, versioned: bool = True) -> str:
    name = f"st-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _versions(s3: Any, bucket: str, key: str) -> list[tuple[str, str, int, str, bool]]:
    resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [(v["Key"], v["VersionId"], v["Size"], v["ETag"], v["IsLatest"])
            for v in resp.get("Versions", []) if v["Key"] == key] + \
        [(m["Key"], m["VersionId"], -1, "marker", m["IsLatest"])
         for m in resp.get("DeleteMarkers", []) if m["Key"] == key]


def _stored(weed: Any, bucket: str) -> list[tuple[str, str, int]]:
    """Every version SeaweedFS holds outside the gateway's range (never the gateway)."""
    resp = weed.client().list_object_versions(Bucket=bucket)
    return [(v["Key"], v["ETag"], v["Size"]) for v in resp.get("Versions", [])
            if not v["Key"].startswith(".s3latent/")] + \
        [(m["Key"], "marker", 0) for m in resp.get("DeleteMarkers", [])
         if not m["Key"].startswith(".s3latent/")]


def _upload(s3: Any, bucket: str, tiny_model: dict[str, str], seed: int,
            key: str = "img.png") -> tuple[str, str, bytes, bytes]:
    image, sidecar, _ = make_pair(tiny_model, seed=seed)
    vi = s3.put_object(Bucket=bucket, Key=key, Body=image, ContentType="image/png")
    vs = s3.put_object(Bucket=bucket, Key=key + SIDE, Body=sidecar)
    return vi.get("VersionId", "null"), vs.get("VersionId", "null"), image, sidecar


def _wait_done(weed: Any, bucket: str, want: int, timeout: float = 90.0) -> None:
    """Until SeaweedFS holds exactly `want` client versions and the gateway no records
    in flight (the plain versions deleted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_stored(weed, bucket)) == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"stored: {_stored(weed, bucket)}")


def test_a_converted_pair_keeps_ids_sizes_etags_and_stores_what_unversioned_does(
        sgw: GatewayProcess, seaweedfs: Any, tiny_model: dict[str, str]) -> None:
    """Failed before: S3-backend versioned buckets were never converted (plain)."""
    s3 = sgw.client()
    plain, vb = _bucket(s3, versioned=False), _bucket(s3)
    _upload(s3, plain, tiny_model, seed=71)
    vi, vs, image, sidecar = _upload(s3, vb, tiny_model, seed=71)
    for bucket in (plain, vb):
        wait_latent(s3, bucket, "img.png")
        wait_latent(s3, bucket, "img.png" + SIDE)
    _wait_done(seaweedfs, vb, 2)
    for key, vid in (("img.png", vi), ("img.png" + SIDE, vs)):
        want = s3.head_object(Bucket=plain, Key=key)
        for kw in ({}, {"VersionId": vid}):
            head = s3.head_object(Bucket=vb, Key=key, **kw)
            assert head["VersionId"] == vid
            assert (head["ContentLength"], head["ETag"]) == (want["ContentLength"], want["ETag"])
            got = s3.get_object(Bucket=vb, Key=key, **kw)
            data = got["Body"].read()
            assert got["VersionId"] == vid and _md5(data) == head["ETag"]
            assert data == s3.get_object(Bucket=plain, Key=key)["Body"].read()
        assert _versions(s3, vb, key) == [(key, vid, want["ContentLength"], want["ETag"], True)]
    assert s3.head_object(Bucket=vb, Key="img.png")["ContentLength"] == len(image)
    # Storage: one container and one stub, the same bytes as the unversioned conversion.
    stored = _stored(seaweedfs, vb)
    assert sorted((k, s) for k, _, s in stored) == \
        sorted((k, s) for k, _, s in _stored(seaweedfs, plain))
    assert all(etag.strip('"') != hashlib.md5(image).hexdigest() for _, etag, _ in stored)
    assert sum(s for _, _, s in stored) < len(image) + len(sidecar)
    # The backend's own version IDs of the stand-ins are no client's.
    backend_ids = [v["VersionId"] for v in seaweedfs.client().list_object_versions(
        Bucket=vb)["Versions"] if not v["Key"].startswith(".s3latent/")]
    assert vi not in backend_ids and vs not in backend_ids
    for bid in backend_ids:
        with pytest.raises(ClientError) as err:
            s3.head_object(Bucket=vb, Key="img.png", VersionId=bid)
        assert err.value.response["Error"]["Code"] in ("404", "NoSuchVersion")
    # Tagging and paging by the client's version.
    s3.put_object_tagging(Bucket=vb, Key="img.png", VersionId=vi,
                          Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    assert s3.get_object_tagging(Bucket=vb, Key="img.png", VersionId=vi)["TagSet"] == \
        [{"Key": "k", "Value": "v"}]
    first = s3.list_object_versions(Bucket=vb, MaxKeys=1)
    assert first["Versions"][0]["VersionId"] == vi and first["NextVersionIdMarker"] == vi
    rest = s3.list_object_versions(Bucket=vb, KeyMarker=first["NextKeyMarker"],
                                   VersionIdMarker=first["NextVersionIdMarker"])
    assert [(v["Key"], v["VersionId"]) for v in rest["Versions"]] == [("img.png" + SIDE, vs)]


def test_overwrite_restore_and_permanent_delete_keep_everything_readable(
        sgw: GatewayProcess, seaweedfs: Any, tiny_model: dict[str, str]) -> None:
    s3 = sgw.client()
    vb = _bucket(s3)
    vi, vs, _, _ = _upload(s3, vb, tiny_model, seed=72)
    wait_latent(s3, vb, "img.png")
    wait_latent(s3, vb, "img.png" + SIDE)
    _wait_done(seaweedfs, vb, 2)
    rendition = s3.get_object(Bucket=vb, Key="img.png")["Body"].read()
    served_side = s3.get_object(Bucket=vb, Key="img.png" + SIDE)["Body"].read()
    other, _, _ = make_pair(tiny_model, seed=73)
    new = s3.put_object(Bucket=vb, Key="img.png", Body=other, ContentType="text/plain")
    assert [v[1] for v in _versions(s3, vb, "img.png")] == [new["VersionId"], vi]
    restored = s3.copy_object(Bucket=vb, Key="img.png",
                              CopySource={"Bucket": vb, "Key": "img.png", "VersionId": vi})
    assert restored["CopySourceVersionId"] == vi
    assert s3.get_object(Bucket=vb, Key="img.png")["Body"].read() == rendition
    # Permanent delete of the converted image version: the stub still reads (keep copy).
    s3.delete_object(Bucket=vb, Key="img.png", VersionId=vi)
    assert vi not in [v[1] for v in _versions(s3, vb, "img.png")]
    assert s3.get_object(Bucket=vb, Key="img.png" + SIDE, VersionId=vs)["Body"].read() == \
        served_side
    with pytest.raises(ClientError):
        s3.head_object(Bucket=vb, Key="img.png", VersionId=vi)
    # The stub version goes too: the sweeper then removes the orphan keep copy.
    s3.delete_object(Bucket=vb, Key="img.png" + SIDE, VersionId=vs)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        keys = [v["Key"] for v in seaweedfs.client().list_object_versions(
            Bucket=vb, Prefix=".s3latent/keep").get("Versions", [])]
        if not keys:
            break
        time.sleep(0.5)
    assert not keys


def test_a_forged_claim_is_shown_as_the_plain_object_it_is(
        sgw: GatewayProcess, seaweedfs: Any) -> None:
    s3 = sgw.client()
    vb = _bucket(s3)
    first = s3.put_object(Bucket=vb, Key="f.bin", Body=b"first")["VersionId"]
    forged = seaweedfs.client().put_object(Bucket=vb, Key="f.bin", Body=b"second",
                                           Metadata={"s3lx-lvid": first})["VersionId"]
    head = s3.head_object(Bucket=vb, Key="f.bin")
    assert head["VersionId"] == forged
    assert s3.get_object(Bucket=vb, Key="f.bin", VersionId=first)["Body"].read() == b"first"
    assert [v[1] for v in _versions(s3, vb, "f.bin")] == [forged, first]


@pytest.mark.parametrize("step", ["after-intent", "after-container", "after-alias",
                                  "after-delete-image", "after-stub"])
def test_a_crash_during_conversion_heals(seaweedfs: Any, tiny_model: dict[str, str],
                                         tmp_path: Path, step: str) -> None:
    crashing = _gateway(seaweedfs, tmp_path / "a", tiny_model, env={"S3LATENT_CRASH_AT": step})
    (tmp_path / "a").mkdir()
    crashing.start()
    s3 = crashing.client()
    vb = _bucket(s3)
    vi, vs, _, sidecar = _upload(s3, vb, tiny_model, seed=74, key="x.png")
    assert crashing.proc is not None
    try:
        crashing.proc.wait(90)  # it dies at the step
    except BaseException:
        crashing.kill()  # never left running: it would convert other tests' buckets
        raise
    crashing.proc = None
    (tmp_path / "b").mkdir()
    healed = _gateway(seaweedfs, tmp_path / "b", tiny_model)
    # Before the sweep too (a gateway that converts nothing would do; this one sweeps at
    # start, so look at once): each version once, under the client's ID.
    healed.start()
    try:
        s3 = healed.client()
        for key, vid in (("x.png", vi), ("x.png" + SIDE, vs)):
            assert [v[1] for v in _versions(s3, vb, key)] == [vid]
            assert s3.head_object(Bucket=vb, Key=key, VersionId=vid)["VersionId"] == vid
        wait_latent(s3, vb, "x.png")
        wait_latent(s3, vb, "x.png" + SIDE)
        _wait_done(seaweedfs, vb, 2)
        for key, vid in (("x.png", vi), ("x.png" + SIDE, vs)):
            listed = _versions(s3, vb, key)
            head = s3.head_object(Bucket=vb, Key=key, VersionId=vid)
            assert listed == [(key, vid, head["ContentLength"], head["ETag"], True)]
        assert len(s3.get_object(Bucket=vb, Key="x.png" + SIDE)["Body"].read()) == len(sidecar)
        deadline = time.monotonic() + 60  # the sweep waits for the to-do's lease (30 s)
        while time.monotonic() < deadline:
            left = seaweedfs.client().list_objects_v2(Bucket=healed_meta(seaweedfs),
                                                      Prefix="records/" + vb + "/")
            names = [o["Key"] for o in left.get("Contents", [])
                     if "/todo/" in o["Key"] or o["Key"].split(" ")[-1].split(".")[1:2]
                     in (["i"], ["x"])]
            if not names:
                break
            time.sleep(0.5)
        assert not names
    finally:
        healed.stop()


def healed_meta(weed: Any) -> str:
    names = [b["Name"] for b in weed.client().list_buckets()["Buckets"]
             if b["Name"].startswith("s3latent-meta-")]
    assert len(names) == 1
    return names[0]


def test_record_names_hold_any_version_id() -> None:
    """AWS version IDs may hold "." (the field separator of record names) and "%"."""
    from datetime import UTC, datetime

    from s3latent.objects import physical, standins

    view = physical.LogicalView(10, "e" * 32, datetime(2026, 1, 1, tzinfo=UTC))
    alias = standins.Alias("Ud8F.1Zx%2Ek+/=", "C.v.2", "abc", view)
    parsed = standins.parse(alias.name("a key.png"))
    assert parsed is not None
    records = standins.KeyRecords()
    standins._add(records, *parsed[1:])
    assert records.aliases == {"Ud8F.1Zx%2Ek+/=": alias}
    assert records.backend_of("Ud8F.1Zx%2Ek+/=") == alias
