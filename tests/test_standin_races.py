"""Races of client requests with a stand-in conversion on SeaweedFS (design §8 R1, R3, R4,
R5; docs/versioning-design.md §3b), each landing deterministically between two named
steps of the conversion.

The gateway runs with S3LATENT_PAUSE_DIR: a test arms `<bucket>.<step>` there, the
conversion of that bucket stops at the step (renaming the file `.reached`), the test makes
its racing request through the gateway (or, for R5, another node's change straight on the
backend), looks at the client's view while the conversion is held, then removes the file
and waits until the conversion and the sweeper have settled. Then the view must be exact
and the backend must hold nothing left over: no plain copy beside a stand-in, no record in
flight, no alias naming a version that is gone, no keep copy.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests import test_latent_objects as _latent
from tests.gateway import GatewayProcess
from tests.test_latent_objects import _config, make_pair

tiny_model = _latent.tiny_model
SIDE = ".latent.safetensors"
IMAGE_STEPS = ["after-intent", "after-container", "after-alias", "after-delete-image"]
ALL_STEPS = [*IMAGE_STEPS, "after-stub"]


@pytest.fixture(scope="module")
def pauses(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pauses")


@pytest.fixture(scope="module")
def rgw(seaweedfs: Any, tiny_model: dict[str, str], pauses: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(seaweedfs.endpoint, tmp_path_factory.mktemp("races"),
                          config=_config(tiny_model),
                          backend_keys=(seaweedfs.access_key, seaweedfs.secret_key),
                          env={"S3LATENT_PAUSE_DIR": str(pauses)})
    proc.start()
    yield proc
    proc.stop()


def _md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def _bucket(s3: Any, lock: bool = False) -> str:
    name = f"race-{uuid.uuid4().hex[:12]}"
    if lock:
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        s3.create_bucket(Bucket=name)
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


class Pause:
    """One armed step of one bucket's conversion."""

    def __init__(self, folder: Path, bucket: str, step: str) -> None:
        self.armed = folder / f"{bucket}.{step}"
        self.reached = folder / f"{bucket}.{step}.reached"
        self.armed.write_text("")

    def wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.reached.exists():
            assert time.monotonic() < deadline, f"the conversion never reached {self.armed}"
            time.sleep(0.05)

    def release(self) -> None:
        self.armed.unlink(missing_ok=True)
        self.reached.unlink(missing_ok=True)


def _view(s3: Any, bucket: str, key: str) -> list[tuple[str, int, str, bool]]:
    """(version ID, size, ETag, IsLatest) of `key`'s versions and markers, as listed."""
    resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [(v["VersionId"], v["Size"], v["ETag"], v["IsLatest"])
            for v in resp.get("Versions", []) if v["Key"] == key] + \
        [(m["VersionId"], -1, "marker", m["IsLatest"])
         for m in resp.get("DeleteMarkers", []) if m["Key"] == key]


def _held(weed: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """The versions (not markers) SeaweedFS itself holds for `key`."""
    resp = weed.client().list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in resp.get("Versions", []) if v["Key"] == key]


def _meta(weed: Any) -> str:
    names = [b["Name"] for b in weed.client().list_buckets()["Buckets"]
             if b["Name"].startswith("s3latent-meta-")]
    assert len(names) == 1
    return names[0]


def _leftovers(weed: Any, bucket: str) -> list[str]:
    """Records in flight (to-dos, intents, tombstones), aliases naming a backend version
    that is gone, and keep copies: what a settled bucket must not hold."""
    direct = weed.client()
    records = [o["Key"] for o in direct.list_objects_v2(
        Bucket=_meta(weed), Prefix=f"records/{bucket}/").get("Contents", [])]
    held = {(v["Key"], v["VersionId"]) for v in direct.list_object_versions(
        Bucket=bucket).get("Versions", [])}
    left = []
    for name in records:
        rest = name.split("/", 3)[3]
        if rest.startswith("todo/"):
            left.append(name)
            continue
        key, _, tail = rest[len("alias/"):].rpartition(" ")
        fields = tail.split(".")
        if fields[1] != "a" or (key, fields[2]) not in held:
            left.append(name)
    left += [k for k, _ in held if k.startswith(".s3latent/keep")]
    return left


def _settle(weed: Any, bucket: str, check: Any = None, timeout: float = 60.0) -> None:
    """Until nothing is left over (and `check` passes): the conversion and the sweeper
    have finished with the bucket."""
    deadline = time.monotonic() + timeout
    while True:
        left = _leftovers(weed, bucket)
        try:
            assert not left, left
            if check is not None:
                check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _upload(s3: Any, bucket: str, tiny_model: dict[str, str], seed: int
            ) -> tuple[str, str, bytes, bytes]:
    image, sidecar, _ = make_pair(tiny_model, seed=seed)
    vi = s3.put_object(Bucket=bucket, Key="img.png", Body=image,
                       ContentType="image/png")["VersionId"]
    vs = s3.put_object(Bucket=bucket, Key="img.png" + SIDE, Body=sidecar)["VersionId"]
    return vi, vs, image, sidecar


def _readable(s3: Any, bucket: str, key: str, vid: str, size: int) -> bytes:
    """Version `vid` reads under its own ID, its listed size and ETag what GET gives."""
    got = s3.get_object(Bucket=bucket, Key=key, VersionId=vid)
    data = got["Body"].read()
    assert got["VersionId"] == vid and got["ETag"] == _md5(data) and len(data) == size
    head = s3.head_object(Bucket=bucket, Key=key, VersionId=vid)
    assert (head["VersionId"], head["ETag"], head["ContentLength"]) == (vid, _md5(data), size)
    listed = [v for v in _view(s3, bucket, key) if v[0] == vid]
    assert [(v[1], v[2]) for v in listed] == [(size, _md5(data))], listed
    return data


def _no_such_version(s3: Any, bucket: str, key: str, vid: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key=key, VersionId=vid)
    assert _code(err.value) == "NoSuchVersion"


@pytest.mark.parametrize("step", ALL_STEPS)
def test_r3_permanent_delete_of_the_image_version_during_conversion(
        rgw: GatewayProcess, seaweedfs: Any, pauses: Path, tiny_model: dict[str, str],
        step: str) -> None:
    """R3: DELETE ?versionId=P between two steps. From the delete's answer on, P is gone
    for the client (nothing stands in for it), and the backend ends with nothing of it;
    the sidecar version stays, plain and byte-exact (no stub reads a deleted version)."""
    s3 = rgw.client()
    bucket = _bucket(s3)
    pause = Pause(pauses, bucket, step)
    try:
        vi, vs, _, sidecar = _upload(s3, bucket, tiny_model, seed=101)
        pause.wait()
        assert s3.delete_object(Bucket=bucket, Key="img.png", VersionId=vi)["VersionId"] == vi
        assert _view(s3, bucket, "img.png") == []
        _no_such_version(s3, bucket, "img.png", vi)
        assert [v[0] for v in _view(s3, bucket, "img.png" + SIDE)] == [vs]
    finally:
        pause.release()

    def settled() -> None:
        assert _view(s3, bucket, "img.png") == []
        assert _held(seaweedfs, bucket, "img.png") == []
        assert len(_held(seaweedfs, bucket, "img.png" + SIDE)) == 1
    _settle(seaweedfs, bucket, settled)
    _no_such_version(s3, bucket, "img.png", vi)
    assert _readable(s3, bucket, "img.png" + SIDE, vs, len(sidecar)) == sidecar
    assert [v[0] for v in _view(s3, bucket, "img.png" + SIDE)] == [vs]


def test_r3_permanent_delete_of_the_sidecar_version_while_its_stub_is_written(
        rgw: GatewayProcess, seaweedfs: Any, pauses: Path, tiny_model: dict[str, str]) -> None:
    """R3 on the sidecar: its stub is written, not yet aliased, when the client deletes S:
    the stub never surfaces as S and goes; the image stays converted under its ID."""
    s3 = rgw.client()
    bucket = _bucket(s3)
    pause = Pause(pauses, bucket, "after-stub")
    try:
        vi, vs, image, _ = _upload(s3, bucket, tiny_model, seed=102)
        pause.wait()
        s3.delete_object(Bucket=bucket, Key="img.png" + SIDE, VersionId=vs)
        assert _view(s3, bucket, "img.png" + SIDE) == []
        _no_such_version(s3, bucket, "img.png" + SIDE, vs)
    finally:
        pause.release()

    def settled() -> None:
        assert _held(seaweedfs, bucket, "img.png" + SIDE) == []
        assert len(_held(seaweedfs, bucket, "img.png")) == 1
    _settle(seaweedfs, bucket, settled)
    assert _view(s3, bucket, "img.png" + SIDE) == []
    assert [v[0] for v in _view(s3, bucket, "img.png")] == [vi]
    _readable(s3, bucket, "img.png", vi, len(image))


@pytest.mark.parametrize("step", ALL_STEPS)
def test_r1_overwrite_during_conversion(
        rgw: GatewayProcess, seaweedfs: Any, pauses: Path, tiny_model: dict[str, str],
        step: str) -> None:
    """R1: a PUT of a new image version between two steps: it is the current version at
    once and stays so; P keeps its ID (converted or not), exactly once in the listing."""
    s3 = rgw.client()
    bucket = _bucket(s3)
    other = make_pair(tiny_model, seed=104)[0]
    pause = Pause(pauses, bucket, step)
    try:
        vi, vs, image, sidecar = _upload(s3, bucket, tiny_model, seed=103)
        pause.wait()
        vn = s3.put_object(Bucket=bucket, Key="img.png", Body=other,
                           ContentType="image/png")["VersionId"]
        assert [(v[0], v[3]) for v in _view(s3, bucket, "img.png")] == [(vn, True), (vi, False)]
        got = s3.get_object(Bucket=bucket, Key="img.png")
        assert got["VersionId"] == vn and got["Body"].read() == other
        _readable(s3, bucket, "img.png", vi, len(image))
    finally:
        pause.release()

    def settled() -> None:
        assert len(_held(seaweedfs, bucket, "img.png")) == 2
        assert len(_held(seaweedfs, bucket, "img.png" + SIDE)) == 1
    _settle(seaweedfs, bucket, settled)
    assert [(v[0], v[3]) for v in _view(s3, bucket, "img.png")] == [(vn, True), (vi, False)]
    # N may have been converted since, with S as its sidecar (the tiny test model admits
    # such a pair at times): its bytes may be a rendition, its ID and view stay exact.
    assert s3.get_object(Bucket=bucket, Key="img.png")["VersionId"] == vn
    _readable(s3, bucket, "img.png", vn, len(other))
    _readable(s3, bucket, "img.png", vi, len(image))
    assert [v[0] for v in _view(s3, bucket, "img.png" + SIDE)] == [vs]
    _readable(s3, bucket, "img.png" + SIDE, vs, len(sidecar))


@pytest.mark.parametrize("step", IMAGE_STEPS)
def test_r4_retention_set_during_conversion(
        rgw: GatewayProcess, seaweedfs: Any, pauses: Path, tiny_model: dict[str, str],
        step: str) -> None:
    """R4: retention and a legal hold put on P between two steps hold on whatever serves
    P afterwards (P itself if the conversion backs off, its stand-in otherwise): P is never
    deleted by the conversion, a client's delete is refused until bypassed and unheld."""
    s3 = rgw.client()
    bucket = _bucket(s3, lock=True)
    until = datetime.now(UTC) + timedelta(days=1)
    pause = Pause(pauses, bucket, step)
    try:
        vi, vs, image, sidecar = _upload(s3, bucket, tiny_model, seed=105)
        pause.wait()
        s3.put_object_retention(Bucket=bucket, Key="img.png", VersionId=vi,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
        s3.put_object_legal_hold(Bucket=bucket, Key="img.png", VersionId=vi,
                                 LegalHold={"Status": "ON"})
        assert s3.get_object_retention(Bucket=bucket, Key="img.png",
                                       VersionId=vi)["Retention"]["Mode"] == "GOVERNANCE"
    finally:
        pause.release()

    def settled() -> None:
        assert len(_held(seaweedfs, bucket, "img.png")) == 1
        assert len(_held(seaweedfs, bucket, "img.png" + SIDE)) == 1
    _settle(seaweedfs, bucket, settled)
    assert [v[0] for v in _view(s3, bucket, "img.png")] == [vi]
    _readable(s3, bucket, "img.png", vi, len(image))
    assert s3.get_object_retention(Bucket=bucket, Key="img.png",
                                   VersionId=vi)["Retention"]["Mode"] == "GOVERNANCE"
    assert s3.get_object_legal_hold(Bucket=bucket, Key="img.png",
                                    VersionId=vi)["LegalHold"]["Status"] == "ON"
    for bypass in (False, True):
        with pytest.raises(ClientError) as err:
            s3.delete_object(Bucket=bucket, Key="img.png", VersionId=vi,
                             BypassGovernanceRetention=bypass)
        assert _code(err.value) == "AccessDenied"
    s3.put_object_legal_hold(Bucket=bucket, Key="img.png", VersionId=vi,
                             LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket=bucket, Key="img.png", VersionId=vi, BypassGovernanceRetention=True)
    assert _view(s3, bucket, "img.png") == []
    assert _held(seaweedfs, bucket, "img.png") == []
    _readable(s3, bucket, "img.png" + SIDE, vs, len(sidecar))


@pytest.mark.parametrize("step", ALL_STEPS)
def test_r5_versioning_suspended_during_conversion(
        rgw: GatewayProcess, seaweedfs: Any, pauses: Path, tiny_model: dict[str, str],
        step: str) -> None:
    """R5: versioning suspended between two steps (by another node, straight on the
    backend: this gateway's own PutBucketVersioning waits for its conversions). A write
    the conversion makes afterwards would be the `null` version: it is removed and that
    version stays plain; no `null` version appears, P and S keep their IDs and bytes."""
    s3 = rgw.client()
    bucket = _bucket(s3)
    pause = Pause(pauses, bucket, step)
    try:
        vi, vs, image, sidecar = _upload(s3, bucket, tiny_model, seed=106)
        pause.wait()
        seaweedfs.client().put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    finally:
        pause.release()

    def settled() -> None:
        assert len(_held(seaweedfs, bucket, "img.png")) == 1
        assert len(_held(seaweedfs, bucket, "img.png" + SIDE)) == 1
    _settle(seaweedfs, bucket, settled)
    time.sleep(1.5)  # more sweeps: none may bring a null version
    _settle(seaweedfs, bucket, settled)
    assert [(v[0], v[3]) for v in _view(s3, bucket, "img.png")] == [(vi, True)]
    assert [(v[0], v[3]) for v in _view(s3, bucket, "img.png" + SIDE)] == [(vs, True)]
    _readable(s3, bucket, "img.png", vi, len(image))
    _readable(s3, bucket, "img.png" + SIDE, vs, len(sidecar))
    for key in ("img.png", "img.png" + SIDE):
        assert "null" not in [v["VersionId"] for v in _held(seaweedfs, bucket, key)]


@pytest.mark.parametrize("key", ["img.png", "img.png" + SIDE])
def test_r1_a_reupload_of_the_same_bytes_stays_the_newest_version(
        rgw: GatewayProcess, seaweedfs: Any, pauses: Path, tiny_model: dict[str, str],
        key: str) -> None:
    """R1 with the very bytes of P (or S) uploaded again while the conversion is before
    its write: the write's guard (the ETag) passes, but the stand-in must not land above
    the new version and hide it (failed before: the listing showed P as the latest)."""
    s3 = rgw.client()
    bucket = _bucket(s3)
    step = "after-intent" if key == "img.png" else "after-delete-image"
    pause = Pause(pauses, bucket, step)
    try:
        vi, vs, image, sidecar = _upload(s3, bucket, tiny_model, seed=107)
        pause.wait()
        again = s3.put_object(Bucket=bucket, Key=key,
                              Body=image if key == "img.png" else sidecar)["VersionId"]
    finally:
        pause.release()
    first = vi if key == "img.png" else vs

    def settled() -> None:
        assert [(v[0], v[3]) for v in _view(s3, bucket, key)] == [(again, True), (first, False)]
        assert len(_held(seaweedfs, bucket, key)) == 2
    _settle(seaweedfs, bucket, settled)
    time.sleep(1.5)  # more sweeps and conversions: the order stays
    _settle(seaweedfs, bucket, settled)
    assert s3.head_object(Bucket=bucket, Key=key)["VersionId"] == again
    size = len(image) if key == "img.png" else len(sidecar)
    _readable(s3, bucket, key, again, size)
    _readable(s3, bucket, key, first, size)
