"""Bucket lifecycle: configuration, x-amz-expiration, the expiry worker (docs/lifecycle.md).

Real gateways on both backends (boto3) with a 2-second lifecycle "day" for the contract;
the worker's safety rules (a newer write, a locked version) in-process on the local backend
with the clock moved instead of waited for. Also the small conditional gaps: DeleteObjects
entries with ETag / LastModifiedTime / Size, PUT If-None-Match with an ETag, presigned
X-Amz-Expires=0.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from s3latent.objects.lifecycle import Lifecycle
from s3latent.s3api.handlers.lifecycle import parse_lifecycle
from tests.gateway import GatewayProcess, on_backend
from tests.inprocess import InProcessGateway, serve_gateway
from tests.test_latent_objects import make_pair, tiny_model, wait_latent  # noqa: F401

DAY_S = 2.0
SIDE = ".latent.safetensors"


def _config(model: dict[str, str]) -> str:
    return (f'[models.tiny]\nkind = "tae"\narch = "taesd"\ndecoder = "{model["decoder"]}"\n'
            f'[buckets."*"]\ncodec = "q8"\n'
            f"[server]\nsweep_interval_s = 1.0\nlifecycle_day_s = {DAY_S}\n"
            f"lifecycle_interval_s = 0.5\n")


@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def lc_gateway(request: pytest.FixtureRequest, tiny_model: dict[str, str],  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp(f"lc-{request.param}")
    proc = on_backend(request, workdir, config=_config(tiny_model))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def s3(lc_gateway: GatewayProcess) -> Any:
    return lc_gateway.client()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"lc-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def _keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def _wait(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


# -- configuration ---------------------------------------------------------------------

def test_config_round_trip_and_delete(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert _code(exc) == (404, "NoSuchLifecycleConfiguration")
    rules = [
        {"ID": "old", "Expiration": {"Days": 31}, "Prefix": "logs/", "Status": "Enabled"},
        {"ID": "tagged", "Filter": {"And": {"Prefix": "a/", "Tags": [
            {"Key": "k", "Value": "v"}, {"Key": "k2", "Value": "v2"}],
            "ObjectSizeGreaterThan": 10}}, "Status": "Disabled",
         "Expiration": {"Date": datetime(2030, 1, 1, tzinfo=UTC)}},
        {"ID": "versions", "Filter": {}, "Status": "Enabled",
         "Expiration": {"ExpiredObjectDeleteMarker": True},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 3, "NewerNoncurrentVersions": 2},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                          LifecycleConfiguration={"Rules": rules})
    got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert got[0] == rules[0]
    assert got[1]["Filter"]["And"]["Tags"] == rules[1]["Filter"]["And"]["Tags"]
    assert got[1]["Expiration"]["Date"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert got[2]["NoncurrentVersionExpiration"] == rules[2]["NoncurrentVersionExpiration"]
    assert got[2]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    # A rule without an ID gets one, as on S3.
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"Expiration": {"Days": 1}, "Prefix": "", "Status": "Enabled"}]})
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"][0]["ID"]
    assert s3.delete_bucket_lifecycle(Bucket=bucket)["ResponseMetadata"][
        "HTTPStatusCode"] == 204
    assert s3.delete_bucket_lifecycle(Bucket=bucket)["ResponseMetadata"][
        "HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert _code(exc) == (404, "NoSuchLifecycleConfiguration")


def test_recreated_bucket_does_not_inherit_its_lifecycle(s3: Any, bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "r", "Expiration": {"Days": 1}, "Prefix": "", "Status": "Enabled"}]})
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert _code(exc) == (404, "NoSuchLifecycleConfiguration")


def _rule(**extra: Any) -> dict[str, Any]:
    rule = {"ID": "r", "Prefix": "p/", "Status": "Enabled", "Expiration": {"Days": 1}}
    rule.update(extra)
    return {k: v for k, v in rule.items() if v is not None}


@pytest.mark.parametrize(("rules", "expected"), [
    ([_rule(Status="enabled")], (400, "MalformedXML")),
    ([_rule(ID="a" * 256)], (400, "InvalidArgument")),
    ([_rule(), _rule(Prefix="q/")], (400, "InvalidArgument")),  # same ID twice
    ([_rule(Expiration={"Days": 0})], (400, "InvalidArgument")),
    ([_rule(Expiration={"Date": datetime(2030, 1, 1, 12, tzinfo=UTC)})],
     (400, "InvalidArgument")),  # not at midnight UTC
    ([_rule(Expiration={"Days": 1, "ExpiredObjectDeleteMarker": True})], (400, "MalformedXML")),
    ([_rule(Prefix=None)], (400, "MalformedXML")),  # neither Filter nor Prefix
    ([_rule(Filter={"Prefix": "x"})], (400, "MalformedXML")),  # both
    ([_rule(Prefix=None, Filter={"Prefix": "x", "And": {"Prefix": "y"}})],
     (400, "MalformedXML")),  # a predicate beside And
    ([_rule(Expiration=None)], (400, "InvalidRequest")),  # no action
    ([_rule(Prefix=None, Filter={"Tag": {"Key": "k", "Value": "v"}},
            Expiration={"ExpiredObjectDeleteMarker": True})], (400, "InvalidRequest")),
    ([_rule(NoncurrentVersionExpiration={"NoncurrentDays": 1,
                                         "NewerNoncurrentVersions": 101})],
     (400, "InvalidArgument")),
    ([_rule(Transitions=[{"Days": 30, "StorageClass": "GLACIER"}])],
     (501, "NotImplemented")),
])
def test_invalid_configurations(s3: Any, bucket: str, rules: list[dict[str, Any]],
                                expected: tuple[int, str]) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                              LifecycleConfiguration={"Rules": rules})
    assert _code(exc) == expected
    assert exc.value.response["ResponseMetadata"]["RequestId"]


def test_unknown_storage_class_is_malformed() -> None:
    body = (b"<LifecycleConfiguration><Rule><ID>r</ID><Filter/><Status>Enabled</Status>"
            b"<Transition><Days>1</Days><StorageClass>COLD</StorageClass></Transition>"
            b"</Rule></LifecycleConfiguration>")
    with pytest.raises(Exception) as exc:
        parse_lifecycle(body)
    assert getattr(exc.value, "code", None) == "MalformedXML"


def test_expiry_date_rounds_up_to_midnight_utc() -> None:
    config = Lifecycle.from_record(parse_lifecycle(
        b"<LifecycleConfiguration><Rule><ID>r</ID><Prefix></Prefix><Status>Enabled</Status>"
        b"<Expiration><Days>3</Days></Expiration></Rule></LifecycleConfiguration>"))
    assert config is not None
    created = datetime(2014, 1, 15, 10, 30, tzinfo=UTC)
    assert config.current_expiry("k", 1, created, None) == (
        datetime(2014, 1, 19, tzinfo=UTC), "r")


# -- x-amz-expiration ------------------------------------------------------------------

def _expiration(response: dict[str, Any]) -> str | None:
    return response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-expiration")


def test_expiration_header_on_put_head_and_get(s3: Any, bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "week", "Expiration": {"Days": 7}, "Prefix": "tmp/", "Status": "Enabled"},
        {"ID": "tagged", "Expiration": {"Days": 3}, "Status": "Enabled",
         "Filter": {"And": {"Prefix": "tmp/", "Tags": [{"Key": "t", "Value": "1"}]}}},
        {"ID": "off", "Expiration": {"Days": 1}, "Prefix": "tmp/", "Status": "Disabled"}]})
    put = s3.put_object(Bucket=bucket, Key="tmp/a", Body=b"x")
    head = s3.head_object(Bucket=bucket, Key="tmp/a")
    header = _expiration(head)
    assert header is not None and header.endswith('rule-id="week"')
    assert _expiration(put) == header
    assert _expiration(s3.get_object(Bucket=bucket, Key="tmp/a")) == header
    when = parsedate_to_datetime(header.split('"')[1])
    assert abs((when - head["LastModified"]).total_seconds() - 7 * DAY_S) < 1.5
    # A matching tag rule that expires sooner wins; without the tag it does not apply.
    put = s3.put_object(Bucket=bucket, Key="tmp/b", Body=b"x", Tagging="t=1")
    assert (_expiration(put) or "").endswith('rule-id="tagged"')
    assert (_expiration(s3.head_object(Bucket=bucket, Key="tmp/b")) or "").endswith(
        'rule-id="tagged"')
    assert _expiration(s3.head_object(Bucket=bucket, Key="tmp/a")).endswith('rule-id="week"')
    s3.put_object(Bucket=bucket, Key="other", Body=b"x")
    assert _expiration(s3.head_object(Bucket=bucket, Key="other")) is None


# -- the worker ------------------------------------------------------------------------

def test_worker_expires_plain_and_latent_objects(s3: Any, bucket: str,
                                                 tiny_model: dict[str, str]  # noqa: F811
                                                 ) -> None:
    image, sidecar, _ = make_pair(tiny_model, seed=3)
    s3.put_object(Bucket=bucket, Key="img.png", Body=image, ContentType="image/png",
                  Tagging="expire=yes")
    s3.put_object(Bucket=bucket, Key="img.png" + SIDE, Body=sidecar)
    wait_latent(s3, bucket, "img.png")
    # The container is committed before the sidecar's stub: until the stub is there the
    # sidecar key still holds the upload's exact bytes, not the container's dequantised ones.
    wait_latent(s3, bucket, "img.png" + SIDE)
    served = s3.get_object(Bucket=bucket, Key="img.png" + SIDE)["Body"].read()
    s3.put_object(Bucket=bucket, Key="tmp/plain", Body=b"plain", Tagging="expire=yes")
    s3.put_object(Bucket=bucket, Key="keep", Body=b"keep")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "tag", "Expiration": {"Days": 1}, "Status": "Enabled",
         "Filter": {"Tag": {"Key": "expire", "Value": "yes"}}}]})
    _wait(lambda: _keys(s3, bucket) == ["img.png" + SIDE, "keep"])
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="img.png")
    assert _code(exc) == (404, "NoSuchKey")
    # The sidecar's key has its own rules (no tag here): it stays, and reads as before the
    # image (whose container held its latent) expired.
    assert s3.get_object(Bucket=bucket, Key="img.png" + SIDE)["Body"].read() == served
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"keep"


def test_worker_in_a_versioned_bucket(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="cur", Body=b"1")
    s3.put_object(Bucket=bucket, Key="old", Body=b"1")
    s3.put_object(Bucket=bucket, Key="old", Body=b"2")
    s3.put_object(Bucket=bucket, Key="gone", Body=b"1")
    s3.delete_object(Bucket=bucket, Key="gone")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "cur", "Expiration": {"Days": 1}, "Prefix": "cur", "Status": "Enabled"},
        {"ID": "nc", "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
         "Expiration": {"ExpiredObjectDeleteMarker": True}, "Prefix": "old",
         "Status": "Enabled"},
        {"ID": "gone", "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
         "Expiration": {"ExpiredObjectDeleteMarker": True}, "Prefix": "gone",
         "Status": "Enabled"}]})

    def state() -> dict[str, list[str]]:
        listing = s3.list_object_versions(Bucket=bucket)
        out: dict[str, list[str]] = {}
        for v in listing.get("Versions", []):
            out.setdefault(v["Key"], []).append("v")
        for m in listing.get("DeleteMarkers", []):
            out.setdefault(m["Key"], []).append("m")
        return {k: sorted(v) for k, v in out.items()}

    # cur: marked deleted (its version kept, noncurrent); old: its noncurrent version goes;
    # gone: the version goes, then the marker left alone.
    _wait(lambda: state() == {"cur": ["m", "v"], "old": ["v"]}, timeout=40)
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == b"2"


def test_a_noncurrent_converted_version_expires_whole(
        s3: Any, bucket: str, lc_gateway: GatewayProcess, request: pytest.FixtureRequest,
        tiny_model: dict[str, str]) -> None:  # noqa: F811
    """NoncurrentVersionExpiration of a converted image version: the client's version goes,
    and with it what holds its bytes on the backend (on SeaweedFS its stand-in: untested
    before; no plain copy either); the sidecar version that reads from it stays
    readable byte for byte (its keep copy)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    image, sidecar, _ = make_pair(tiny_model, seed=5)
    vi = s3.put_object(Bucket=bucket, Key="img.png", Body=image,
                       ContentType="image/png")["VersionId"]
    vs = s3.put_object(Bucket=bucket, Key="img.png" + SIDE, Body=sidecar)["VersionId"]
    wait_latent(s3, bucket, "img.png")
    wait_latent(s3, bucket, "img.png" + SIDE)
    direct = None if lc_gateway.backend.startswith("file://") else \
        request.getfixturevalue("seaweedfs").client()

    def held(key: str) -> list[str]:
        assert direct is not None
        resp = direct.list_object_versions(Bucket=bucket, Prefix=key)
        return [v["VersionId"] for v in resp.get("Versions", []) if v["Key"] == key]

    if direct is not None:  # the plain version is gone once the stand-in took its place
        _wait(lambda: len(held("img.png")) == 1)
    served = s3.get_object(Bucket=bucket, Key="img.png" + SIDE)["Body"].read()
    vn = s3.put_object(Bucket=bucket, Key="img.png", Body=b"not an image",
                       ContentType="text/plain")["VersionId"]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "nc", "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
         "Filter": {"Prefix": "img.png"}, "Status": "Enabled"}]})

    def versions(key: str) -> list[str]:
        resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
        return [v["VersionId"] for v in resp.get("Versions", []) if v["Key"] == key]
    _wait(lambda: versions("img.png") == [vn], timeout=40)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="img.png", VersionId=vi)
    assert _code(exc) == (404, "NoSuchVersion")
    assert versions("img.png" + SIDE) == [vs]
    assert s3.get_object(Bucket=bucket, Key="img.png" + SIDE,
                         VersionId=vs)["Body"].read() == served
    if direct is not None:
        assert held("img.png") == [vn]
        assert len(held("img.png" + SIDE)) == 1


def test_worker_aborts_old_multipart_uploads(s3: Any, bucket: str) -> None:
    old = s3.create_multipart_upload(Bucket=bucket, Key="up/a")["UploadId"]
    s3.create_multipart_upload(Bucket=bucket, Key="other/b")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "mpu", "Prefix": "up/", "Status": "Enabled",
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]})
    _wait(lambda: [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)
                   .get("Uploads", [])] == ["other/b"])
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="up/a", UploadId=old)
    assert _code(exc) == (404, "NoSuchUpload")


# -- the worker's safety, in-process with the clock moved ------------------------------

@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    # An hour between passes: the test runs the passes itself.
    async with serve_gateway(tmp_path, "[server]\nlifecycle_interval_s = 3600\n") as served:
        yield served


def _later(days: int) -> Any:
    return lambda: datetime.now(UTC) + timedelta(days=days)


async def test_worker_never_deletes_a_newer_write(gw: InProcessGateway) -> None:
    store, worker = gw.store, gw.store.lifecycle
    await gw.run(lambda s3: s3.create_bucket(Bucket="bkt"))
    await gw.run(lambda s3: s3.put_object(Bucket="bkt", Key="k", Body=b"old"))
    await gw.run(lambda s3: s3.put_bucket_lifecycle_configuration(
        Bucket="bkt", LifecycleConfiguration={"Rules": [
            {"ID": "r", "Expiration": {"Days": 1}, "Prefix": "", "Status": "Enabled"}]}))
    listed = store.list_objects

    async def list_then_overwrite(*args: Any, **kwargs: Any) -> Any:
        page = await listed(*args, **kwargs)  # judged from this listing ...
        await gw.run(lambda s3: s3.put_object(Bucket="bkt", Key="k", Body=b"new"))
        return page  # ... while a client wrote the key again

    store.list_objects = list_then_overwrite
    worker.now = _later(3)
    await worker.run_once()
    store.list_objects = listed
    body = await gw.run(lambda s3: s3.get_object(Bucket="bkt", Key="k")["Body"].read())
    assert body == b"new"
    await worker.run_once()  # judged again: now it is old enough to go
    assert await gw.run(lambda s3: s3.list_objects_v2(Bucket="bkt").get("KeyCount")) == 0


async def test_worker_never_removes_a_locked_version(gw: InProcessGateway) -> None:
    worker = gw.store.lifecycle
    await gw.run(lambda s3: s3.create_bucket(Bucket="lkb", ObjectLockEnabledForBucket=True))
    held = await gw.run(lambda s3: s3.put_object(Bucket="lkb", Key="k", Body=b"held",
                                                 ObjectLockLegalHoldStatus="ON"))
    free = await gw.run(lambda s3: s3.put_object(Bucket="lkb", Key="k", Body=b"free"))
    await gw.run(lambda s3: s3.put_object(Bucket="lkb", Key="k", Body=b"current"))
    await gw.run(lambda s3: s3.put_bucket_lifecycle_configuration(
        Bucket="lkb", LifecycleConfiguration={"Rules": [
            {"ID": "nc", "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
             "Prefix": "", "Status": "Enabled"}]}))
    worker.now = _later(5)
    await worker.run_once()
    versions = await gw.run(lambda s3: s3.list_object_versions(Bucket="lkb")["Versions"])
    ids = {v["VersionId"] for v in versions}
    assert held["VersionId"] in ids and free["VersionId"] not in ids and len(ids) == 2
    await gw.run(lambda s3: s3.put_object_legal_hold(
        Bucket="lkb", Key="k", VersionId=held["VersionId"], LegalHold={"Status": "OFF"}))


# -- conditional gaps --------------------------------------------------------------------

def test_delete_objects_conditional_entries(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"abc")["ETag"]
    head = s3.head_object(Bucket=bucket, Key="k")
    for cond in ({"ETag": '"0123"'}, {"Size": 4},
                 {"LastModifiedTime": datetime(2015, 1, 1, tzinfo=UTC)}):
        result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", **cond}]})
        assert [e["Code"] for e in result["Errors"]] == ["PreconditionFailed"], cond
    assert _keys(s3, bucket) == ["k"]
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "k", "ETag": etag, "Size": 3, "LastModifiedTime": head["LastModified"]}]})
    assert [d["Key"] for d in result["Deleted"]] == ["k"] and "Errors" not in result
    assert _keys(s3, bucket) == []
    # A version's entry is judged against that version.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put = s3.put_object(Bucket=bucket, Key="v", Body=b"1")
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "v", "VersionId": put["VersionId"], "ETag": "bad"}]})
    assert result["Errors"][0]["Code"] == "PreconditionFailed"
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "v", "VersionId": put["VersionId"], "ETag": put["ETag"]}]})
    assert result["Deleted"][0]["VersionId"] == put["VersionId"]
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)


def test_put_if_none_match_with_an_etag(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["ETag"]

    def put(value: str, body: bytes) -> Any:
        def add(params: dict[str, Any], **_: Any) -> None:
            params["headers"]["If-None-Match"] = value
        s3.meta.events.register("before-call.s3.PutObject", add)
        try:
            return s3.put_object(Bucket=bucket, Key="k", Body=body)
        finally:
            s3.meta.events.unregister("before-call.s3.PutObject", add)

    with pytest.raises(ClientError) as exc:
        put(etag, b"two")
    assert _code(exc) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as exc:
        put(f'"other", {etag}', b"two")
    assert _code(exc) == (412, "PreconditionFailed")
    put('"0123456789abcdef0123456789abcdef"', b"three")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"three"


def test_presigned_url_with_zero_expiry_is_expired(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                    ExpiresIn=0)
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 403
    assert b"<Code>AccessDenied</Code>" in reply.content
    assert b"Request has expired" in reply.content


@pytest.mark.parametrize("versioned", [False, True])
async def test_worker_expires_sse_s3_objects(gw: InProcessGateway, versioned: bool) -> None:
    """Listings show an SSE-S3 object's plaintext ETag and size (docs/encryption.md); the
    expiry was conditional on the stored ciphertext's, so it never matched and encrypted
    objects were never expired (nor deleted by a DeleteObjects entry with the ETag and
    Size the client sees)."""
    worker = gw.store.lifecycle
    await gw.run(lambda s3: s3.create_bucket(Bucket="encb"))
    if versioned:
        await gw.run(lambda s3: s3.put_bucket_versioning(
            Bucket="encb", VersioningConfiguration={"Status": "Enabled"}))
    for key in ("old", "cond"):
        await gw.run(lambda s3, key=key: s3.put_object(  # type: ignore[misc]
            Bucket="encb", Key=key, Body=b"x" * 1000, ServerSideEncryption="AES256"))
    head = await gw.run(lambda s3: s3.head_object(Bucket="encb", Key="cond"))
    result = await gw.run(lambda s3: s3.delete_objects(Bucket="encb", Delete={"Objects": [
        {"Key": "cond", "ETag": head["ETag"], "Size": head["ContentLength"]}]}))
    assert "Errors" not in result, result["Errors"]
    await gw.run(lambda s3: s3.put_bucket_lifecycle_configuration(
        Bucket="encb", LifecycleConfiguration={"Rules": [
            {"ID": "r", "Expiration": {"Days": 1}, "Prefix": "", "Status": "Enabled"}]}))
    worker.now = _later(3)
    await worker.run_once()
    assert await gw.run(lambda s3: s3.list_objects_v2(Bucket="encb").get("KeyCount")) == 0


async def test_worker_never_removes_a_newer_write_in_a_suspended_bucket(
        gw: InProcessGateway) -> None:
    """In a Suspended bucket the expiry's delete marker replaces the `null` version for
    good. It was judged (HEAD) and then deleted without holding off writes: a client's
    PUT landing in between (a new `null` version) was removed with it."""
    import asyncio

    store, worker = gw.store, gw.store.lifecycle
    await gw.run(lambda s3: s3.create_bucket(Bucket="susp"))
    await gw.run(lambda s3: s3.put_bucket_versioning(
        Bucket="susp", VersioningConfiguration={"Status": "Suspended"}))
    await gw.run(lambda s3: s3.put_object(Bucket="susp", Key="k", Body=b"old"))
    await gw.run(lambda s3: s3.put_bucket_lifecycle_configuration(
        Bucket="susp", LifecycleConfiguration={"Rules": [
            {"ID": "r", "Expiration": {"Days": 1}, "Prefix": "", "Status": "Enabled"}]}))
    head = store.versioned.head_object
    writes: list[asyncio.Task[Any]] = []

    async def head_then_overwrite(*args: Any, **kwargs: Any) -> Any:
        judged = await head(*args, **kwargs)  # the expiry judges this version ...
        if not writes:  # ... while a client writes the key again
            writes.append(asyncio.create_task(gw.run(lambda s3: s3.put_object(
                Bucket="susp", Key="k", Body=b"new"))))
            await asyncio.sleep(0.5)  # the write lands now unless it waits for the delete
        return judged

    store.versioned.head_object = head_then_overwrite
    worker.now = _later(3)
    try:
        await worker.run_once()
    finally:
        store.versioned.head_object = head
    assert writes
    await writes[0]
    body = await gw.run(lambda s3: s3.get_object(Bucket="susp", Key="k")["Body"].read())
    assert body == b"new"


async def test_a_bucket_created_again_during_a_pass_keeps_its_objects(
        gw: InProcessGateway) -> None:
    """A pass reads the bucket's rules once, then lists page after page. The bucket was
    emptied, deleted and created again meanwhile (without a configuration): its new
    objects were judged by the old rules, and a past Date expired them."""
    store, worker = gw.store, gw.store.lifecycle
    await gw.run(lambda s3: s3.create_bucket(Bucket="again"))
    for key in ("a", "b"):
        await gw.run(lambda s3, key=key: s3.put_object(  # type: ignore[misc]
            Bucket="again", Key=key, Body=b"old"))
    await gw.run(lambda s3: s3.put_bucket_lifecycle_configuration(
        Bucket="again", LifecycleConfiguration={"Rules": [
            {"ID": "r", "Expiration": {"Date": datetime(2020, 1, 1, tzinfo=UTC)},
             "Prefix": "", "Status": "Enabled"}]}))
    listed = store.list_objects
    calls: list[int] = []

    async def one_per_page(bucket: str, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # between two pages: the bucket is made anew by a client
            def recreate(s3: Any) -> None:
                s3.delete_object(Bucket="again", Key="b")
                s3.delete_bucket(Bucket="again")
                s3.create_bucket(Bucket="again")
                s3.put_object(Bucket="again", Key="c", Body=b"new")
            await gw.run(recreate)
        return await listed(bucket, **{**kwargs, "max_keys": 1})

    store.list_objects = one_per_page
    try:
        await worker.run_once()
    finally:
        store.list_objects = listed
    assert len(calls) >= 2
    body = await gw.run(lambda s3: s3.get_object(Bucket="again", Key="c")["Body"].read())
    assert body == b"new"
