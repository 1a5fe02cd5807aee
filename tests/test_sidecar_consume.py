"""Issue 15: `sidecar = "consume"`, end to end with boto3 against a gateway process.

A consumed pair's sidecar key goes once the pair is admitted, so the image key's container
holds only what the image needs (the latent, or the image as AVIF alone) and AVIF can win
for pairs. The tiny seeded model of test_latent_objects.py; buckets named cs-* consume
under "smallest", ca-* under "avif", cl-* under "latent"; keep-* are the default (sidecar
kept).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from botocore.exceptions import ClientError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from s3latent.latent import avif
from s3latent.latent.container import peek_header
from s3latent.latent.fidelity import decode_image_bytes, psnr
from tests.gateway import GatewayProcess
from tests.test_latent_objects import _similar, make_pair, tiny_model  # noqa: F401

pytestmark = pytest.mark.skipif(not avif.available(), reason="Pillow without AVIF/dav1d")

MIN_PSNR = 30.0
# Sweeps this often: the tests wait for sweeps counted on /metrics, not for a fixed time.
SWEEP_S = 0.25
SUFFIX = ".latent.safetensors"


def _config(model: dict[str, str], *, convert: bool = True) -> str:
    return (f'[models.tiny]\nkind = "tae"\narch = "taesd"\ndecoder = "{model["decoder"]}"\n'
            f'[buckets."*"]\ncodec = "q8"\nmin_psnr = {MIN_PSNR}\n'
            f"convert = {'true' if convert else 'false'}\n"
            f'[buckets."cs-*"]\nsidecar = "consume"\n'
            f'[buckets."ca-*"]\nsidecar = "consume"\nrepresentation = "avif"\n'
            f'[buckets."cl-*"]\nsidecar = "consume"\nrepresentation = "latent"\n'
            f'[server]\nsweep_interval_s = {SWEEP_S}\n')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("consume-gw")


@pytest.fixture(scope="module")
def gw(workdir: Path, tiny_model: dict[str, str]) -> Iterator[GatewayProcess]:  # noqa: F811
    proc = GatewayProcess(f"file://{workdir / 'data'}", workdir, config=_config(tiny_model))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def s3(gw: GatewayProcess) -> Any:
    return gw.client()


def _bucket(s3: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def _wait(s3: Any, bucket: str, key: str, *, refused: bool = False,
          timeout: float = 90.0) -> dict[str, Any]:
    """HEAD of `key` once converted (or, with `refused`, once refused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = s3.head_object(Bucket=bucket, Key=key)
        h = head["ResponseMetadata"]["HTTPHeaders"]
        state = h.get("x-s3latent-state", "")
        if not refused and h.get("x-s3latent-representation") == "latent":
            return head
        if state.startswith("refused"):
            if refused:
                return head
            raise AssertionError(f"refused: {state}")
        time.sleep(0.2)
    raise AssertionError(f"{bucket}/{key} was not {'refused' if refused else 'converted'}")


def _wait_gone(s3: Any, bucket: str, key: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            return
        time.sleep(0.2)
    raise AssertionError(f"{bucket}/{key} is still there")


def _sweeps(gw: GatewayProcess) -> float:
    """Completed sweeps so far (s3latent_sweeps_total on /metrics)."""
    text = requests.get(gw.endpoint + "/metrics", timeout=5).text
    m = re.search(r"^s3latent_sweeps_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_sweeps(gw: GatewayProcess, count: int, timeout: float = 60.0) -> None:
    """Until `count` more sweeps have completed: the last one began after this call."""
    want = _sweeps(gw) + count
    deadline = time.monotonic() + timeout
    while _sweeps(gw) < want:
        assert time.monotonic() < deadline, f"fewer than {count} sweeps in {timeout:.0f}s"
        time.sleep(0.05)


def _wait_outcomes(gw: GatewayProcess, bucket: str, key: str, outcome: str, count: int,
                   timeout: float = 60.0) -> None:
    """Until the log shows `count` conversions of bucket/key that ended in `outcome`."""
    line = re.compile(rf"conversion of {re.escape(bucket)}/{re.escape(key)} \(.*\): "
                      rf"{re.escape(outcome)}")
    deadline = time.monotonic() + timeout
    while len(line.findall(gw.log_path.read_text(errors="replace"))) < count:
        assert time.monotonic() < deadline, f"{bucket}/{key}: fewer than {count} {outcome!r}"
        time.sleep(0.05)


def _assert_no_such_key(s3: Any, bucket: str, key: str) -> None:
    """The consumed sidecar key: 404 on HEAD, NoSuchKey on GET, in no listing."""
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key=key)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key=key)
    assert exc.value.response["Error"]["Code"] == "NoSuchKey"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert key not in listed
    versions = [v["Key"] for v in s3.list_object_versions(Bucket=bucket).get("Versions", [])]
    assert key not in versions


def _physical_dir(workdir: Path, bucket: str) -> Path:
    return workdir / "data" / "buckets" / bucket


def _header(workdir: Path, bucket: str, key: str) -> Any:
    raw = (_physical_dir(workdir, bucket) / f"{key}.~o").read_bytes()
    assert raw[:8] == b"\x89S3LAT\r\n", f"{bucket}/{key} is no container"
    return peek_header(raw)


def _reads_back_alike(s3: Any, bucket: str, key: str, image: bytes, head: dict[str, Any],
                      pixels: Any) -> bytes:
    """HEAD, GET and both listings agree on ETag and length; the rendition is in policy."""
    got = s3.get_object(Bucket=bucket, Key=key)
    data = got["Body"].read()
    assert len(data) == len(image) == head["ContentLength"] == got["ContentLength"]
    assert got["ETag"] == head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    listing = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listing[key]["Size"] == len(data) and listing[key]["ETag"] == got["ETag"]
    versions = {v["Key"]: v for v in s3.list_object_versions(Bucket=bucket)["Versions"]}
    assert versions[key]["ETag"] == got["ETag"] and versions[key]["Size"] == len(data)
    assert psnr(decode_image_bytes(data)[0], pixels) >= MIN_PSNR
    return data


def _candidates(gw: GatewayProcess, bucket: str, key: str) -> dict[str, int]:
    """The candidates' container bytes from the conversion's log line."""
    m = re.search(rf"conversion of {bucket}/{re.escape(key)} \([\d.]+ s\): admitted: .*"
                  r"\(candidates: ([^)]*)\)", gw.log())
    assert m, "no candidates in the conversion's log line"
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+) bytes", m.group(1))}


def test_consumed_pair_admitted_as_avif_holds_the_image_alone(
        s3: Any, gw: GatewayProcess, workdir: Path, tiny_model: dict[str, str],  # noqa: F811
) -> None:
    bucket = _bucket(s3, "ca")
    image, sidecar, pixels = make_pair(tiny_model, seed=3)
    s3.put_object(Bucket=bucket, Key="a.png", Body=image, ContentType="image/png",
                  Metadata={"origin": "test"})
    s3.put_object(Bucket=bucket, Key="a.png" + SUFFIX, Body=sidecar)
    head = _wait(s3, bucket, "a.png")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-stored-as"] == "avif"
    _wait_gone(s3, bucket, "a.png" + SUFFIX)
    _reads_back_alike(s3, bucket, "a.png", image, head, pixels)
    assert s3.head_object(Bucket=bucket, Key="a.png")["Metadata"] == {"origin": "test"}
    _assert_no_such_key(s3, bucket, "a.png" + SUFFIX)
    # The container holds the image as AVIF and nothing for the sidecar; no stub is left.
    header = _header(workdir, bucket, "a.png")
    assert header.kind == "avif" and header.sidecar is None and "latent" not in header.extra
    assert sorted(p.name for p in _physical_dir(workdir, bucket).glob("a.png*.~o")) == \
        ["a.png.~o"]
    # It holds no latent to give.
    s3.meta.events.register_first(
        "before-sign.s3.GetObject",
        lambda request, **_: request.headers.__setitem__("x-s3latent-want", "latent"))
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="a.png")
    assert exc.value.response["Error"]["Code"] == "InvalidRequest"


def test_consumed_pair_under_smallest_stores_the_smaller_candidate(
        s3: Any, gw: GatewayProcess, workdir: Path, tiny_model: dict[str, str],  # noqa: F811
) -> None:
    bucket = _bucket(s3, "cs")
    image, sidecar, pixels = make_pair(tiny_model, seed=4)
    s3.put_object(Bucket=bucket, Key="s.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="s.png" + SUFFIX, Body=sidecar)
    head = _wait(s3, bucket, "s.png")
    _wait_gone(s3, bucket, "s.png" + SUFFIX)
    _reads_back_alike(s3, bucket, "s.png", image, head, pixels)
    _assert_no_such_key(s3, bucket, "s.png" + SUFFIX)
    candidates = _candidates(gw, bucket, "s.png")
    assert set(candidates) == {"latent", "avif"}
    stored = (_physical_dir(workdir, bucket) / "s.png.~o").read_bytes()
    header = peek_header(stored)
    # The physical object is the smaller candidate, whichever it is.
    assert len(stored) >= min(candidates.values())  # the local backend's file holds more
    chosen = "avif" if candidates["avif"] < candidates["latent"] else "latent"
    assert header.kind == chosen and header.sidecar is None
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-stored-as"] == chosen


def test_consumed_pair_admitted_as_latent_loses_its_sidecar_key_too(
        s3: Any, workdir: Path, tiny_model: dict[str, str],  # noqa: F811
) -> None:
    bucket = _bucket(s3, "cl")
    image, sidecar, pixels = make_pair(tiny_model, seed=5)
    s3.put_object(Bucket=bucket, Key="sidecar-first.png" + SUFFIX, Body=sidecar)
    s3.put_object(Bucket=bucket, Key="sidecar-first.png", Body=image, ContentType="image/png")
    head = _wait(s3, bucket, "sidecar-first.png")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-stored-as"] == "latent"
    _wait_gone(s3, bucket, "sidecar-first.png" + SUFFIX)
    _reads_back_alike(s3, bucket, "sidecar-first.png", image, head, pixels)
    _assert_no_such_key(s3, bucket, "sidecar-first.png" + SUFFIX)
    header = _header(workdir, bucket, "sidecar-first.png")
    assert header.kind == "latent" and header.codec == "q8" and header.sidecar is None
    # The latent is still there to give (x-s3latent-want: latent).
    s3.meta.events.register_first(
        "before-sign.s3.GetObject",
        lambda request, **_: request.headers.__setitem__("x-s3latent-want", "latent"))
    latent = s3.get_object(Bucket=bucket, Key="sidecar-first.png")["Body"].read()
    assert _similar(load_safetensors(latent)["latent"].float(),
                    load_safetensors(sidecar)["latent"].float())


def test_refused_consumed_pair_keeps_both_keys_as_uploaded(
        s3: Any, gw: GatewayProcess, tiny_model: dict[str, str],  # noqa: F811
) -> None:
    bucket = _bucket(s3, "cs")
    image, _, _ = make_pair(tiny_model, seed=6)
    # A latent the model cannot decode (3 channels, not 4): the pair is refused.
    sidecar = save_safetensors({"latent": torch.zeros(3, 16, 16)}, metadata={"model": "tiny"})
    put_image = s3.put_object(Bucket=bucket, Key="r.png", Body=image, ContentType="image/png")
    put_side = s3.put_object(Bucket=bucket, Key="r.png" + SUFFIX, Body=sidecar)
    head = _wait(s3, bucket, "r.png", refused=True)
    assert "channel" in head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-state"]
    _wait_sweeps(gw, 2)  # two sweeps: nothing is consumed later either
    got = s3.get_object(Bucket=bucket, Key="r.png")
    assert got["Body"].read() == image and got["ETag"] == put_image["ETag"]
    side = s3.get_object(Bucket=bucket, Key="r.png" + SUFFIX)
    assert side["Body"].read() == sidecar and side["ETag"] == put_side["ETag"]
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"r.png", "r.png" + SUFFIX} <= listed


def test_keep_bucket_is_unchanged_its_sidecar_stays_readable(
        s3: Any, gw: GatewayProcess, workdir: Path, tiny_model: dict[str, str],  # noqa: F811
) -> None:
    bucket = _bucket(s3, "keep")
    image, sidecar, _ = make_pair(tiny_model, seed=7)
    s3.put_object(Bucket=bucket, Key="k.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="k.png" + SUFFIX, Body=sidecar)
    head = _wait(s3, bucket, "k.png")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-stored-as"] == "latent"
    header = _header(workdir, bucket, "k.png")
    assert header.kind == "latent" and header.sidecar is not None
    _wait_sweeps(gw, 2)
    side = s3.get_object(Bucket=bucket, Key="k.png" + SUFFIX)["Body"].read()
    assert len(side) == len(sidecar)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "k.png" + SUFFIX in listed


def test_sidecar_uploaded_again_after_consumption_is_kept(
        s3: Any, gw: GatewayProcess, tiny_model: dict[str, str],  # noqa: F811
) -> None:
    """A newer PUT of the sidecar key, even of the very same bytes (same ETag), is a new
    object the client wrote: it is never consumed by the old admission."""
    bucket = _bucket(s3, "cl")
    image, sidecar, _ = make_pair(tiny_model, seed=9)
    s3.put_object(Bucket=bucket, Key="again.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="again.png" + SUFFIX, Body=sidecar)
    _wait(s3, bucket, "again.png")
    _wait_gone(s3, bucket, "again.png" + SUFFIX)
    time.sleep(1.1)  # a later Last-Modified than the admitted upload's
    put = s3.put_object(Bucket=bucket, Key="again.png" + SUFFIX, Body=sidecar)
    # Its conversion attempt, then a sweep's (the PUT queues the pair once), both keep it;
    # and two more sweeps.
    _wait_outcomes(gw, bucket, "again.png", "sidecar key written since conversion; kept", 2)
    _wait_sweeps(gw, 2)
    side = s3.get_object(Bucket=bucket, Key="again.png" + SUFFIX)
    assert side["Body"].read() == sidecar and side["ETag"] == put["ETag"]


def _crashing(tmp_path: Path, model: dict[str, str], step: str) -> GatewayProcess:
    proc = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path, config=_config(model))
    os.environ["S3LATENT_CRASH_AT"] = step
    try:
        proc.start()
    finally:
        del os.environ["S3LATENT_CRASH_AT"]
    return proc


@pytest.mark.parametrize("step", ["after-container", "before-consume"])
def test_crash_before_the_sidecar_is_consumed_loses_nothing_and_is_finished_later(
        step: str, tiny_model: dict[str, str], tmp_path: Path,  # noqa: F811
) -> None:
    crashing = _crashing(tmp_path, tiny_model, step)
    s3 = crashing.client()
    s3.create_bucket(Bucket="cl-crash")
    image, sidecar, pixels = make_pair(tiny_model, seed=8)
    s3.put_object(Bucket="cl-crash", Key="x.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket="cl-crash", Key="x.png" + SUFFIX, Body=sidecar)
    assert crashing.proc is not None
    crashing.proc.wait(90)  # it dies at the step: the container is committed, the sidecar not
    crashing.proc = None
    survivor = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path,
                              config=_config(tiny_model)).start()
    try:
        s3 = survivor.client()
        head = s3.head_object(Bucket="cl-crash", Key="x.png")
        _reads_back_alike(s3, "cl-crash", "x.png", image, head, pixels)
        # The sweeper consumes the sidecar the container was admitted with.
        _wait_gone(s3, "cl-crash", "x.png" + SUFFIX)
        _assert_no_such_key(s3, "cl-crash", "x.png" + SUFFIX)
        assert "sidecar consumed" in survivor.log()
        assert s3.get_object(Bucket="cl-crash", Key="x.png")["Body"].read() == \
            s3.get_object(Bucket="cl-crash", Key="x.png")["Body"].read()
    finally:
        survivor.stop()


def test_sidecar_rewritten_after_a_crash_is_never_consumed(
        tiny_model: dict[str, str], tmp_path: Path,  # noqa: F811
) -> None:
    """Container committed, then a crash; before any sweep, the client PUTs the sidecar key
    again with the same bytes (same ETag): that newer object is kept for good."""
    crashing = _crashing(tmp_path, tiny_model, "before-consume")
    s3 = crashing.client()
    s3.create_bucket(Bucket="cl-race")
    image, sidecar, _ = make_pair(tiny_model, seed=10)
    s3.put_object(Bucket="cl-race", Key="y.png", Body=image, ContentType="image/png")
    first = s3.put_object(Bucket="cl-race", Key="y.png" + SUFFIX, Body=sidecar)
    assert crashing.proc is not None
    crashing.proc.wait(90)
    crashing.proc = None
    time.sleep(1.1)  # a later Last-Modified
    # Rewritten through a gateway that converts nothing (so nothing is consumed meanwhile).
    idle = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path / "idle",
                          config=_config(tiny_model, convert=False)).start()
    try:
        put = idle.client().put_object(Bucket="cl-race", Key="y.png" + SUFFIX, Body=sidecar)
    finally:
        idle.stop()
    assert put["ETag"] == first["ETag"]
    survivor = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path,
                              config=_config(tiny_model)).start()
    try:
        s3 = survivor.client()
        deadline = time.monotonic() + 30
        while "kept as it is" not in survivor.log() and time.monotonic() < deadline:
            time.sleep(0.3)
        _wait_sweeps(survivor, 2)  # and more sweeps
        assert "sidecar key written since conversion; kept as it is" in survivor.log()
        side = s3.get_object(Bucket="cl-race", Key="y.png" + SUFFIX)
        assert side["Body"].read() == sidecar and side["ETag"] == put["ETag"]
    finally:
        survivor.stop()
