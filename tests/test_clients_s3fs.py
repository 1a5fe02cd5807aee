"""s3fs / fsspec against the gateway, on both backends, with the libraries' default settings.

s3fs is how dataframe and ML tooling (pandas, pyarrow, PyTorch data loaders) reach S3, so
its access patterns are checked end to end: streaming writes that become multipart uploads,
listings that infer directories from delimiters, readahead ranged reads, concurrent chunked
downloads, bulk deletes and recursive put/get of a directory tree.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess

s3fs = pytest.importorskip("s3fs")

MiB = 1024 * 1024


@pytest.fixture
def fs(gateway: GatewayProcess) -> Any:
    """A fresh S3FileSystem (no instance or listing cache) with small blocks."""
    return s3fs.S3FileSystem(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        endpoint_url=gateway.endpoint,
        client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"retries": {"max_attempts": 2}},
        skip_instance_cache=True,
        use_listings_cache=False,
        default_block_size=5 * MiB,
        max_concurrency=4,
    )


def _data(n: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def _names(paths: list[str], bucket: str) -> set[str]:
    return {p[len(bucket) + 1 :] for p in paths}


def test_open_write_read_binary_and_text(fs: Any, bucket: str) -> None:
    payload = _data(70_000)
    with fs.open(f"{bucket}/docs/blob.bin", "wb") as f:
        f.write(payload[:1000])
        f.write(payload[1000:])
    with fs.open(f"{bucket}/docs/blob.bin", "rb") as f:
        assert f.read() == payload
    with fs.open(f"{bucket}/docs/note.txt", "w", encoding="utf-8") as f:
        f.write("grüße\nzweite Zeile\n")
    with fs.open(f"{bucket}/docs/note.txt", "r", encoding="utf-8") as f:
        assert f.readlines() == ["grüße\n", "zweite Zeile\n"]
    assert fs.cat(f"{bucket}/docs/note.txt") == "grüße\nzweite Zeile\n".encode()


def test_streaming_write_becomes_multipart(fs: Any, bucket: str) -> None:
    """11 MiB through a 5 MiB block size: three parts, S3's multipart ETag."""
    payload = _data(11 * MiB, seed=1)
    with fs.open(f"{bucket}/big.bin", "wb", block_size=5 * MiB) as f:
        for i in range(0, len(payload), MiB):
            f.write(payload[i : i + MiB])
    info = fs.info(f"{bucket}/big.bin")
    assert info["size"] == len(payload)
    assert info["type"] == "file"
    assert re.fullmatch(r'"?[0-9a-f]{32}-3"?', info["ETag"]), info["ETag"]
    assert fs.cat_file(f"{bucket}/big.bin") == payload


def test_ls_info_find_du(fs: Any, bucket: str) -> None:
    files = {"a.txt": 5, "dir/b.txt": 1234, "dir/sub/c.bin": 70_000, "dir/sub/d.bin": 0}
    for key, size in files.items():
        fs.pipe_file(f"{bucket}/{key}", _data(size, seed=size))

    top = fs.ls(bucket, detail=True)
    assert {(e["name"], e["type"]) for e in top} == {
        (f"{bucket}/a.txt", "file"),
        (f"{bucket}/dir", "directory"),
    }
    assert {e["name"]: e["size"] for e in top if e["type"] == "file"} == {f"{bucket}/a.txt": 5}
    assert _names(fs.ls(f"{bucket}/dir"), bucket) == {"dir/b.txt", "dir/sub"}
    assert _names(fs.ls(f"{bucket}/dir/sub/"), bucket) == {"dir/sub/c.bin", "dir/sub/d.bin"}

    for key, size in files.items():
        info = fs.info(f"{bucket}/{key}")
        assert (info["type"], info["size"]) == ("file", size), key
        assert fs.size(f"{bucket}/{key}") == size
    assert fs.info(f"{bucket}/dir/sub")["type"] == "directory"
    assert fs.isdir(f"{bucket}/dir") and not fs.isfile(f"{bucket}/dir")
    assert not fs.exists(f"{bucket}/nope") and not fs.exists(f"{bucket}/dir/su")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{bucket}/missing.txt")

    found = fs.find(bucket, detail=True)
    assert {k: v["size"] for k, v in found.items()} == {
        f"{bucket}/{k}": s for k, s in files.items()
    }
    assert fs.du(f"{bucket}/dir") == 1234 + 70_000


def test_glob_matches_local_filesystem_semantics(fs: Any, bucket: str, tmp_path: Path) -> None:
    """The same tree locally and in the bucket must glob to the same relative paths."""
    keys = [
        "imgs/1.png",
        "imgs/2.png",
        "imgs/3.jpg",
        "imgs/x/4.png",
        "imgs/x/y/5.png",
        "other/6.png",
        "imgs.png",
    ]
    local = fsspec.filesystem("file")
    for key in keys:
        fs.pipe_file(f"{bucket}/{key}", key.encode())
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(key.encode())
    root = tmp_path.as_posix()
    for pattern in ["imgs/*.png", "imgs/**/*.png", "*/x/*", "imgs/?.*", "**/*.jpg", "imgs*"]:
        remote = _names(fs.glob(f"{bucket}/{pattern}"), bucket)
        expected = {p[len(root) + 1 :] for p in local.glob(f"{root}/{pattern}")}
        assert remote == expected, pattern
    assert len(_names(fs.glob(f"{bucket}/imgs/*.png"), bucket)) == 2


def test_rm_file_list_and_recursive(fs: Any, bucket: str, gateway: GatewayProcess) -> None:
    for i in range(25):
        fs.pipe_file(f"{bucket}/tree/{i % 3}/f{i}.txt", b"x" * i)
    fs.pipe_file(f"{bucket}/keep.txt", b"keep")
    fs.pipe_file(f"{bucket}/single.txt", b"bye")

    fs.rm(f"{bucket}/single.txt")
    assert not fs.exists(f"{bucket}/single.txt")
    fs.rm([f"{bucket}/tree/0/f0.txt", f"{bucket}/tree/1/f1.txt"])
    assert len(fs.find(f"{bucket}/tree")) == 23
    fs.rm(f"{bucket}/tree", recursive=True)  # DeleteObjects in one batch
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{bucket}/single.txt")
    assert not fs.exists(f"{bucket}/tree/2/f2.txt")
    files = {e["name"] for e in fs.ls(bucket, detail=True) if e["type"] == "file"}
    assert files == {f"{bucket}/keep.txt"}
    assert [k for k, v in fs.find(bucket, detail=True).items() if v["type"] == "file"] == [
        f"{bucket}/keep.txt"
    ]
    if gateway.backend.startswith("file:"):
        # SeaweedFS keeps emptied directories as 'tree/' entries (docs/s3-compat.md);
        # the gateway's own backend must not.
        assert fs.find(f"{bucket}/tree") == []
        assert not fs.exists(f"{bucket}/tree")
        assert _names(fs.ls(bucket), bucket) == {"keep.txt"}


def test_cat_file_ranges(fs: Any, bucket: str) -> None:
    payload = _data(300_000, seed=7)
    path = f"{bucket}/r.bin"
    fs.pipe_file(path, payload)
    cases = [
        (0, 1),
        (0, 10),
        (10, 20),
        (299_990, None),
        (123_456, 234_567),
        (-100, None),
        (-1000, -10),
        (5, -5),
        (None, 64),
    ]
    for start, end in cases:
        got = fs.cat_file(path, start=start, end=end)
        assert got == payload[start:end], (start, end)
    assert fs.read_block(path, 1000, 5000) == payload[1000:6000]
    assert fs.head(path, 33) == payload[:33]
    assert fs.tail(path, 44) == payload[-44:]


def test_random_access_reads_through_readahead(fs: Any, bucket: str) -> None:
    payload = _data(2 * MiB + 17, seed=3)
    path = f"{bucket}/seek.bin"
    fs.pipe_file(path, payload)
    with fs.open(path, "rb", block_size=64 * 1024, cache_type="readahead") as f:
        assert f.size == len(payload)
        for offset, length in [(0, 10), (MiB, 100_000), (len(payload) - 5, 100), (77, 1)]:
            f.seek(offset)
            assert f.read(length) == payload[offset : offset + length]
        f.seek(-17, os.SEEK_END)
        assert f.read() == payload[-17:]


def test_concurrent_chunked_download(gateway: GatewayProcess, bucket: str) -> None:
    """cat_file of an object bigger than the block size splits into parallel ranged GETs."""
    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        endpoint_url=gateway.endpoint,
        client_kwargs={"region_name": "us-east-1"},
        skip_instance_cache=True,
        use_listings_cache=False,
        default_block_size=MiB,
        max_concurrency=4,
    )
    payload = _data(3 * MiB + MiB // 2, seed=4)
    fs.pipe_file(f"{bucket}/chunks.bin", payload)
    assert fs.cat_file(f"{bucket}/chunks.bin") == payload


def test_put_get_directory_tree(fs: Any, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {
        "top.txt": b"top",
        "empty.dat": b"",
        "a/one.bin": _data(100_000, seed=11),
        "a/b/two.json": b'{"k": 2}',
        "a/b/c/three.png": _data(6 * MiB, seed=12),  # multipart through put
        "name with spaces/ü+%.txt": b"odd names",
    }
    for rel, body in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(body)

    fs.put(f"{src}/", f"{bucket}/tree", recursive=True)
    remote = fs.find(f"{bucket}/tree", detail=True)
    assert {k[len(bucket) + len("/tree/") :]: v["size"] for k, v in remote.items()} == {
        rel: len(body) for rel, body in files.items()
    }

    dst = tmp_path / "dst"
    fs.get(f"{bucket}/tree/", f"{dst}/", recursive=True)
    got = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == files


def test_copy_move_and_special_keys(fs: Any, bucket: str) -> None:
    odd = f"{bucket}/odd/a b+c%d é=~!.txt"
    fs.pipe_file(odd, b"special")
    assert _names(fs.ls(f"{bucket}/odd"), bucket) == {"odd/a b+c%d é=~!.txt"}
    assert fs.cat_file(odd) == b"special"

    fs.copy(odd, f"{bucket}/copy/dup.txt")
    assert fs.cat_file(f"{bucket}/copy/dup.txt") == b"special"
    fs.mv(f"{bucket}/copy/dup.txt", f"{bucket}/moved/dup.txt")
    assert not fs.exists(f"{bucket}/copy/dup.txt")
    assert fs.cat_file(f"{bucket}/moved/dup.txt") == b"special"
    assert fs.cat([odd, f"{bucket}/moved/dup.txt"]) == {
        odd: b"special",
        f"{bucket}/moved/dup.txt": b"special",
    }


def test_bucket_level_operations(fs: Any, gateway: GatewayProcess) -> None:
    name = f"s3fs-{os.urandom(4).hex()}"
    fs.mkdir(name)
    try:
        assert name in fs.ls("")
        fs.pipe_file(f"{name}/k", b"v")
        assert fs.exists(name)
        with pytest.raises(OSError):
            fs.rmdir(name)  # BucketNotEmpty
    finally:
        fs.rm(name, recursive=True)
    fs.invalidate_cache()
    assert not fs.exists(name)
