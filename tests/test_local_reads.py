"""The local backend answers one version completely; damage and a full disk say so.

Backend calls in-process, the whole app in-process (tests/inprocess.py: requests
signed by tests/sigv4_client), and boto3 against a real gateway on a small tmpfs.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import logging
import os
import random
import re
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from botocore.exceptions import ClientError

from s3latent.backends import local
from s3latent.backends.base import ObjectMeta
from s3latent.backends.local import LocalBackend
from s3latent.s3.errors import S3Error
from tests.gateway import GatewayProcess
from tests.inprocess import InProcessGateway, serve_gateway
from tests.sigv4_client import sign

SIZES = (0, 1, 1000, 70_000, 300_000, 700_000)  # several READ_CHUNKs apart


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def open_files_under(root: Path) -> list[str]:
    """Paths under `root` this process holds open (from /proc/self/fd)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.append(target)
    return out


def object_file(root: Path, bucket: str, key: str) -> Path:
    return root / "buckets" / bucket / f"{key}{local.OBJ_SUFFIX}"


def damage(path: Path, how: str) -> None:
    """Break an object file's trailer in one of the ways a disk or a person can."""
    raw = path.read_bytes()
    length, _ = struct.unpack(">I4s", raw[-8:])
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "magic":
        path.write_bytes(raw[:-4] + b"XXXX")
    elif how == "not-utf8":
        start = len(raw) - 8 - length
        path.write_bytes(raw[:start] + b"\xff\xfe" + raw[start + 2:])
    elif how == "length":
        path.write_bytes(raw[:-8] + struct.pack(">I4s", 2**31, local.MAGIC))
    elif how == "size":  # data bytes missing, trailer intact
        path.write_bytes(raw[1:])
    elif how == "tiny":
        path.write_bytes(b"S3")
    else:
        raise AssertionError(how)


DAMAGES = ["truncated", "magic", "not-utf8", "length", "size", "tiny"]


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    b = LocalBackend(tmp_path / "data")
    await b.start()
    await b.create_bucket("bkt")
    yield b
    await b.close()


# -- the backend on its own ---------------------------------------------------------------

async def test_get_answers_one_version_under_concurrent_puts(backend: LocalBackend) -> None:
    """Writers replace one key with payloads of different sizes; every GET (whole or a
    range sized from an earlier HEAD, as the front end does) is exactly the bytes of the
    version whose info came with it."""
    versions: dict[str, bytes] = {}
    rng = random.Random(7)

    async def put() -> None:
        data = os.urandom(rng.choice(SIZES))
        versions[hashlib.md5(data).hexdigest()] = data
        await backend.put_object("bkt", "k", once(data), ObjectMeta())

    await put()
    stop = time.monotonic() + 3
    counts = {"whole": 0, "range": 0}

    async def writer() -> None:
        while time.monotonic() < stop:
            await asyncio.wait_for(put(), 20)

    async def reader(ranged: bool) -> None:
        while time.monotonic() < stop:
            byte_range = None
            if ranged:
                size = (await backend.head_object("bkt", "k")).size
                if size < 2:
                    continue
                byte_range = (size // 3, size - 2)
            info, body = await asyncio.wait_for(backend.get_object("bkt", "k", byte_range), 20)
            try:
                data = b"".join(await asyncio.wait_for(_collect(body), 20))
            finally:
                await body.close()
            stored = versions[info.etag]
            assert info.size == len(stored)
            first, last = byte_range or (0, len(stored) - 1)
            assert data == stored[first:last + 1], f"body is not version {info.etag}"
            counts["range" if ranged else "whole"] += 1

    await asyncio.gather(*(writer() for _ in range(3)), *(reader(False) for _ in range(3)),
                         *(reader(True) for _ in range(2)))
    assert counts["whole"] > 50 and counts["range"] > 20 and len(versions) > 20, counts
    assert open_files_under(backend.root) == []


async def _collect(body: Any) -> list[bytes]:
    return [chunk async for chunk in body]


async def test_bodies_and_failures_leave_no_file_open(backend: LocalBackend) -> None:
    await backend.put_object("bkt", "k", once(os.urandom(600_000)), ObjectMeta())
    await backend.put_object("bkt", "bad", once(b"x" * 100), ObjectMeta())
    damage(object_file(backend.root, "bkt", "bad"), "magic")
    for _ in range(5):
        _, body = await backend.get_object("bkt", "k")  # never read
        await body.close()
        _, body = await backend.get_object("bkt", "k", (10, 400_000))
        async for _ in body:  # one chunk, then the reader leaves
            break
        await body.close()
        await backend.head_object("bkt", "k")
        with pytest.raises(S3Error):
            await backend.get_object("bkt", "bad")
        with pytest.raises(S3Error):
            await backend.get_object("bkt", "missing")
        await backend.copy_object("bkt", "k", "bkt", "copy", None)
        await backend.put_tags("bkt", "k", {"a": "b"})
    assert open_files_under(backend.root) == []


@pytest.mark.parametrize("how", DAMAGES)
async def test_damaged_trailer_is_internal_error_logged_with_key(
        backend: LocalBackend, caplog: pytest.LogCaptureFixture, how: str) -> None:
    await backend.put_object("bkt", "photo.png", once(b"p" * 5000), ObjectMeta())
    damage(object_file(backend.root, "bkt", "photo.png"), how)
    caplog.set_level(logging.ERROR, logger="s3latent.backends.local")
    for call in (backend.head_object("bkt", "photo.png"), backend.get_object("bkt", "photo.png")):
        with pytest.raises(S3Error) as exc:
            await call
        assert exc.value.code == "InternalError" and exc.value.status == 500
        assert "corrupt" in exc.value.message
    assert "bkt/'photo.png'" in caplog.text and "corrupt" in caplog.text
    # A fresh process's listing leaves it out, and says so in the log.
    fresh = LocalBackend(backend.root)
    await fresh.start()
    assert (await fresh.list_objects("bkt")).entries == []
    assert "photo.png" in caplog.records[-1].getMessage()


class _FullDisk:
    """A temp file on a file system with `room` bytes left."""

    def __init__(self, file: Any, room: list[int]) -> None:
        self._file, self._room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return int(self._file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def fill_disk(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Make the local backend's temp files fail with ENOSPC after `room` bytes in all."""
    left = [room]
    real_init = local._Writer.__init__

    def init(self: Any, tmp_dir: Path, what: str) -> None:
        real_init(self, tmp_dir, what)
        self.file = _FullDisk(self.file, left)

    monkeypatch.setattr(local._Writer, "__init__", init)


async def test_out_of_space_is_insufficient_storage_and_keeps_the_old_version(
        backend: LocalBackend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    await backend.put_object("bkt", "k", once(b"old version"), ObjectMeta())
    fill_disk(monkeypatch, 100_000)
    caplog.set_level(logging.ERROR, logger="s3latent.backends.local")
    with pytest.raises(S3Error) as exc:
        await backend.put_object("bkt", "k", once(os.urandom(200_000)), ObjectMeta())
    assert exc.value.code == "InsufficientStorage" and exc.value.status == 507
    assert "bkt/'k'" in caplog.text
    _, body = await backend.get_object("bkt", "k")
    try:
        assert b"".join(await _collect(body)) == b"old version"
    finally:
        await body.close()
    assert list((backend.root / ".s3latent" / "tmp").iterdir()) == []
    uid = await backend.create_multipart_upload("bkt", "mp", ObjectMeta())
    with pytest.raises(S3Error) as exc:
        await backend.upload_part("bkt", "mp", uid, 1, once(os.urandom(200_000)))
    assert exc.value.code == "InsufficientStorage"
    assert list((backend.root / ".s3latent" / "tmp").iterdir()) == []


# -- the whole app, in-process --------------------------------------------------------------

@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    """The real wiring in-process (tests/inprocess.py), with no read cache: these tests
    watch the backend's files and bodies, which a cached copy would hide."""
    async with serve_gateway(tmp_path, "[cache]\nmemory = 0\n") as gw:
        assert (await gw.call("PUT", "/bkt")).status == 200
        yield gw


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


async def test_http_get_headers_and_body_are_one_version(served: InProcessGateway) -> None:
    """ETag, Content-Length, x-amz-checksum-crc32 and Content-Range all describe the body."""
    versions: dict[str, bytes] = {}
    rng = random.Random(11)
    stop = time.monotonic() + 3
    seen = {"whole": 0, "range": 0}

    async def put() -> None:
        data = os.urandom(rng.choice(SIZES))
        versions[hashlib.md5(data).hexdigest()] = data
        status, _, _ = await served.call("PUT", "/bkt/k", body=data, checksum="crc32")
        assert status == 200

    await put()

    async def writer() -> None:
        while time.monotonic() < stop:
            await put()

    async def reader(ranged: bool) -> None:
        while time.monotonic() < stop:
            headers = {"x-amz-checksum-mode": "ENABLED"}
            if ranged:
                headers["Range"] = "bytes=1000-80000"
            status, got, data = await served.call("GET", "/bkt/k", headers=headers)
            if status == 416:  # the version read was shorter than the range
                continue
            assert status in (200, 206), (status, data[:300])
            etag = got["ETag"].strip('"')
            stored = versions[etag]
            assert int(got["Content-Length"]) == len(data)
            if ranged:
                assert status == 206
                first, last = map(int, re.match(r"bytes (\d+)-(\d+)/(\d+)$",
                                                got["Content-Range"]).groups()[:2])
                assert got["Content-Range"].endswith(f"/{len(stored)}")
                assert data == stored[first:last + 1]
                seen["range"] += 1
            else:
                assert status == 200 and data == stored, f"body is not version {etag}"
                assert got["x-amz-checksum-crc32"] == crc32_b64(data)
                seen["whole"] += 1

    await asyncio.gather(*(writer() for _ in range(3)), *(reader(False) for _ in range(3)),
                         reader(True), reader(True))
    assert seen["whole"] > 20 and seen["range"] > 5, seen
    assert open_files_under(served.backend.root) == []


async def test_http_damaged_trailer_is_500_internal_error(
        served: InProcessGateway, caplog: pytest.LogCaptureFixture) -> None:
    await served.call("PUT", "/bkt/dir/photo.png", body=b"x" * 3000)
    damage(served.backend.root / "buckets" / "bkt" / "dir" / "photo.png.~o", "not-utf8")
    caplog.set_level(logging.ERROR)
    for method in ("GET", "HEAD"):
        status, headers, body = await served.call(method, "/bkt/dir/photo.png")
        assert status == 500, (status, body)
        assert headers["x-amz-request-id"]
    status, _, body = await served.call("GET", "/bkt/dir/photo.png")
    assert b"<Code>InternalError</Code>" in body and b"corrupt" in body
    assert b"<RequestId>" in body
    assert "bkt/'dir/photo.png'" in caplog.text


async def test_http_out_of_space_is_507_counted_old_version_intact(
        served: InProcessGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    old = b"the old version"
    await served.call("PUT", "/bkt/k", body=old)
    fill_disk(monkeypatch, 50_000)
    status, headers, body = await served.call("PUT", "/bkt/k", body=os.urandom(100_000))
    assert status == 507, body
    assert b"<Code>InsufficientStorage</Code>" in body and b"out of space" in body
    assert headers["x-amz-request-id"] in body.decode()
    status, _, body = await served.call("GET", "/bkt/k")
    assert status == 200 and body == old
    async with served.session.get(f"http://{served.host}/metrics") as resp:
        metrics = await resp.text()
    assert 's3latent_storage_full_total{operation="PutObject"} 1.0' in metrics


async def test_http_client_leaving_mid_body_closes_the_file(served: InProcessGateway) -> None:
    await served.call("PUT", "/bkt/big", body=os.urandom(8 * 1024 * 1024))
    for _ in range(5):
        raw = sign("GET", "/bkt/big", host=served.host)
        reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
        head = f"GET {raw.target} HTTP/1.1\r\n" + "".join(
            f"{n}: {v}\r\n" for n, v in raw.headers) + "\r\n"
        writer.write(head.encode())
        await writer.drain()
        got = await reader.readexactly(64 * 1024)
        assert got.startswith(b"HTTP/1.1 200")
        writer.transport.abort()  # gone, with most of the body unsent
    deadline = time.monotonic() + 10
    while open_files_under(served.backend.root) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert open_files_under(served.backend.root) == []


async def test_http_body_failing_mid_stream_cuts_the_connection(
        served: InProcessGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read failing after the status line went out must not append an error document
    to the body (which a client would take for object bytes): the connection is cut."""
    data = os.urandom(2 * 1024 * 1024)
    await served.call("PUT", "/bkt/k", body=data)
    real_open = LocalBackend._open

    def open_then_shrink(self: LocalBackend, bucket: str, key: str) -> Any:
        info, f = real_open(self, bucket, key)
        os.truncate(object_file(self.root, bucket, key), 300_000)  # outside damage
        return info, f

    monkeypatch.setattr(LocalBackend, "_open", open_then_shrink)
    with pytest.raises(aiohttp.ClientPayloadError):
        await served.call("GET", "/bkt/k")
    assert open_files_under(served.backend.root) == []


# -- boto3 against a real gateway on a small file system -------------------------------------

@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    """A gateway whose data directory is a 4 MiB tmpfs (needs root to mount)."""
    workdir = tmp_path_factory.mktemp("small-disk")
    mnt = workdir / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    proc = GatewayProcess(f"file://{mnt / 'data'}", workdir)
    try:
        proc.start()
        yield proc, mnt / "data"
    finally:
        proc.stop()
        subprocess.run(["umount", str(mnt)], check=False)


def test_boto3_full_disk_and_damaged_object(small_disk: tuple[GatewayProcess, Path]) -> None:
    proc, root = small_disk
    s3 = proc.client()
    bucket = f"t-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="keep", Body=b"kept bytes")
    for key in ("keep", "new"):
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(6 * 1024 * 1024))
        err = exc.value.response
        assert err["Error"]["Code"] == "InsufficientStorage", err
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 507
        assert "out of space" in err["Error"]["Message"]
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"kept bytes"
    assert list((root / ".s3latent" / "tmp").iterdir()) == []  # the space came back
    metrics = requests.get(proc.endpoint + "/metrics", timeout=5).text
    assert 's3latent_storage_full_total{operation="PutObject"} 2.0' in metrics

    s3.put_object(Bucket=bucket, Key="scan.png", Body=b"y" * 1000)
    damage(object_file(root, bucket, "scan.png"), "size")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="scan.png")
    err = exc.value.response
    assert err["Error"]["Code"] == "InternalError"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "corrupt" in err["Error"]["Message"]
    assert f"{bucket}/'scan.png'" in proc.log()


def test_boto3_gets_under_concurrent_puts(small_disk: tuple[GatewayProcess, Path]) -> None:
    """Threads of boto3 writers and readers on one key: every GET is one version."""
    proc, _ = small_disk
    bucket = f"t-{uuid.uuid4().hex[:8]}"
    clients = [proc.client() for _ in range(5)]  # made first: it takes a while
    clients[0].create_bucket(Bucket=bucket)
    clients[0].put_object(Bucket=bucket, Key="k", Body=b"first")
    versions: dict[str, bytes] = {hashlib.md5(b"first").hexdigest(): b"first"}
    failures: list[str] = []
    counts = [0]

    def writer(seed: int) -> None:
        s3, rng = clients[1 + seed], random.Random(seed)
        while time.monotonic() < stop:
            data = os.urandom(rng.choice((1, 5000, 200_000, 400_000)))
            versions[hashlib.md5(data).hexdigest()] = data
            try:
                s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="CRC32")
            except Exception as exc:
                failures.append(f"PUT: {exc!r}")

    def reader(n: int) -> None:
        s3 = clients[3 + n]
        while time.monotonic() < stop:
            try:
                got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
                # botocore also checks the CRC32 header against the body it read
                data = got["Body"].read()
            except Exception as exc:
                failures.append(f"GET: {exc!r}")
                continue
            etag = got["ETag"].strip('"')
            if versions.get(etag) != data or got["ContentLength"] != len(data):
                failures.append(f"GET: body is not version {etag}")
            counts[0] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    stop = time.monotonic() + 3
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert failures == [] and counts[0] > 10, (failures[:3], counts)

