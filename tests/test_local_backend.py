"""The local-directory backend on its own: crash safety, key escaping, persistence."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s3latent.backends.base import ObjectMeta
from s3latent.backends.local import LocalBackend
from s3latent.errors import S3Error


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(backend: LocalBackend, bucket: str, key: str) -> bytes:
    _, body = await backend.get_object(bucket, key)
    try:
        return b"".join([c async for c in body])
    finally:
        await body.close()


@pytest.fixture
async def backend(tmp_path: Path) -> LocalBackend:
    b = LocalBackend(tmp_path / "data", min_part_size=10)
    await b.start()
    await b.create_bucket("bkt")
    return b


@pytest.mark.parametrize("key", ["../../escape", "a/../../../etc/passwd", "..", ".", "/abs",
                                 "a//b", "trailing/", "~x.~o", "%2e%2e/x", "nul\x00byte",
                                 "é/" + "z" * 400, "a" * 1024])
async def test_hostile_keys_stay_inside(backend: LocalBackend, tmp_path: Path, key: str) -> None:
    await backend.put_object("bkt", key, chunks(b"payload"), ObjectMeta())
    assert await read(backend, "bkt", key) == b"payload"
    bucket_dir = (tmp_path / "data" / "buckets").resolve()
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and ".s3latent" not in path.parts and path.name != ".bucket.json":
            assert path.resolve().is_relative_to(bucket_dir / "bkt"), path
    assert not (tmp_path / "etc").exists() and not (tmp_path / "escape").exists()
    page = await backend.list_objects("bkt")
    assert [e.key for e in page.entries] == [key]


async def test_file_and_directory_of_the_same_name(backend: LocalBackend) -> None:
    await backend.put_object("bkt", "a", chunks(b"file"), ObjectMeta())
    await backend.put_object("bkt", "a/b", chunks(b"nested"), ObjectMeta())
    await backend.put_object("bkt", "a.~o", chunks(b"tricky"), ObjectMeta())
    assert await read(backend, "bkt", "a") == b"file"
    assert await read(backend, "bkt", "a/b") == b"nested"
    assert await read(backend, "bkt", "a.~o") == b"tricky"
    await backend.delete_object("bkt", "a")
    assert await read(backend, "bkt", "a/b") == b"nested"


async def test_failing_body_leaves_old_version(backend: LocalBackend, tmp_path: Path) -> None:
    await backend.put_object("bkt", "k", chunks(b"old"), ObjectMeta())

    async def broken() -> AsyncIterator[bytes]:
        yield b"new data"
        raise S3Error("SignatureDoesNotMatch")

    with pytest.raises(S3Error):
        await backend.put_object("bkt", "k", broken(), ObjectMeta())
    assert await read(backend, "bkt", "k") == b"old"
    assert list((tmp_path / "data" / ".s3latent" / "tmp").iterdir()) == []


async def test_restart_sees_everything_in_order(tmp_path: Path) -> None:
    first = LocalBackend(tmp_path / "d")
    await first.start()
    await first.create_bucket("b")
    keys = ["z", "a/b", "a", "é", "m/n/o", "a b"]
    for k in keys:
        await first.put_object("b", k, chunks(k.encode()), ObjectMeta(metadata={"k": "v"}))
    second = LocalBackend(tmp_path / "d")
    await second.start()
    page = await second.list_objects("b")
    assert [e.key for e in page.entries] == sorted(keys)
    info = await second.head_object("b", "m/n/o")
    assert info.meta.metadata == {"k": "v"} and info.etag == hashlib.md5(b"m/n/o").hexdigest()


WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from s3latent.backends.local import LocalBackend
    from s3latent.backends.base import ObjectMeta

    async def body():
        for i in range(100000):
            yield b"n" * 65536
            if i == 50:
                print("writing", flush=True)
            await asyncio.sleep(0.001)

    async def main():
        b = LocalBackend({root!r})
        await b.start()
        await b.put_object("bkt", "victim", body(), ObjectMeta())

    asyncio.run(main())
""")


async def test_kill_mid_write_keeps_old_object(backend: LocalBackend, tmp_path: Path) -> None:
    await backend.put_object("bkt", "victim", chunks(b"the committed version"), ObjectMeta())
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=repo,
                                                                 root=str(backend.root))],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"writing"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tmp_dir = tmp_path / "data" / ".s3latent" / "tmp"
    assert list(tmp_dir.iterdir()), "the killed writer should have left its temp file"
    restarted = LocalBackend(backend.root)
    await restarted.start()
    assert await read(restarted, "bkt", "victim") == b"the committed version"
    assert list(tmp_dir.iterdir()) == []


async def test_multipart_on_disk(backend: LocalBackend) -> None:
    uid = await backend.create_multipart_upload("bkt", "mp", ObjectMeta(content_type="x/y"))
    e1 = await backend.upload_part("bkt", "mp", uid, 1, chunks(b"0123456789ab"))
    e2 = await backend.upload_part("bkt", "mp", uid, 2, chunks(b"tail"))
    with pytest.raises(S3Error) as exc:
        await backend.complete_multipart_upload("bkt", "mp", uid, [(1, e1), (2, "0" * 32)])
    assert exc.value.code == "InvalidPart"
    with pytest.raises(S3Error) as exc:
        await backend.complete_multipart_upload("bkt", "mp", uid, [(1, e1), (2, e2)],
                                                if_match="f" * 32)
    assert exc.value.code == "NoSuchKey"
    info = await backend.complete_multipart_upload("bkt", "mp", uid, [(1, e1), (2, e2)])
    assert info.etag.endswith("-2") and info.size == 16
    assert await read(backend, "bkt", "mp") == b"0123456789abtail"
    with pytest.raises(S3Error) as exc:
        await backend.list_parts("bkt", "mp", uid)
    assert exc.value.code == "NoSuchUpload"
    with pytest.raises(S3Error) as exc:
        await backend.upload_part("bkt", "mp", "../../etc", 1, chunks(b"x"))
    assert exc.value.code == "NoSuchUpload"


async def test_concurrent_conditional_creates(backend: LocalBackend) -> None:
    async def attempt(i: int) -> bool:
        try:
            await backend.put_object("bkt", "once", chunks(str(i).encode()), ObjectMeta(),
                                     if_none_match="*")
            return True
        except S3Error as exc:
            assert exc.code == "PreconditionFailed"
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1


async def test_concurrent_deletes_and_puts_of_sibling_keys(backend: LocalBackend) -> None:
    """Deleting a key prunes the directories it leaves empty; a delete or a PUT of a sibling
    key in the same directory, running at that moment in another thread, must neither fail
    nor lose its write. Failed before: a delete fsynced its parent after a sibling's delete
    had pruned it (FileNotFoundError, a 500 to `aws s3 rb --force`), and a PUT could find its
    fresh directory pruned before its rename."""
    for round_ in range(40):
        keys = [f"deep/er/k{i}" for i in range(6)]
        await asyncio.gather(*(backend.put_object("bkt", k, chunks(b"x"), ObjectMeta(), size=1)
                               for k in keys))
        new = f"deep/er/new{round_}"
        await asyncio.gather(
            *(backend.delete_object("bkt", k) for k in keys),
            backend.put_object("bkt", new, chunks(b"y"), ObjectMeta(), size=1))
        assert await read(backend, "bkt", new) == b"y"
        await backend.delete_object("bkt", new)
        assert (await backend.list_objects("bkt")).entries == []
