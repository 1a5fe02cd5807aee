"""Memory check: a large object streamed through the gateway must not be held in its memory.

A client PUTs and GETs one object of `--size` bytes (2 GB by default) through a
gateway process, on the local backend and on SeaweedFS. The body is generated
chunk by chunk and never held whole by the client either; its MD5 is computed
on the way out and checked against the ETag and against the bytes read back.
The gateway's RSS (/proc/PID/status VmRSS) is sampled every 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .gateway_bench import MB, MiB, S3Client, S3HttpError, machine_info, parse_size
from .servers import GatewayServer, SeaweedServer, read_rss

DEFAULT_SIZE = 2 * 1000 * MB
DEFAULT_BACKENDS = ("local", "seaweedfs")
RSS_LIMIT = 300 * MB
BUCKET = "s3latent-memcheck"
KEY = "big/object.bin"
CHUNK = 1 * MiB


class RssSampler:
    """Samples a process's RSS on a thread; `mark()` starts a new named phase."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self._phase = "idle"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def mark(self, phase: str) -> None:
        self._sample()
        self._phase = phase
        self._sample()

    def _sample(self) -> None:
        rss = read_rss(self.pid)
        self.samples += 1
        if rss > self.peaks.get(self._phase, 0):
            self.peaks[self._phase] = rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


async def generated_body(size: int, md5: Any, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """`size` bytes of pseudo-random data, made one chunk at a time (MD5 updated as sent)."""
    block = os.urandom(chunk)
    sent = 0
    n = 0
    while sent < size:
        piece = block[: min(chunk, size - sent)]
        # A chunk counter up front so no two chunks are the same bytes.
        piece = n.to_bytes(8, "big") + piece[8:] if len(piece) >= 8 else piece
        md5.update(piece)
        sent += len(piece)
        n += 1
        yield piece


async def _check_one(gateway: GatewayServer, size: int, sampler: RssSampler) -> dict[str, Any]:
    async with S3Client(
        gateway.endpoint, gateway.access_key, gateway.secret_key, connections=4
    ) as client:
        await client.create_bucket(BUCKET)
        sampler.mark("put")
        md5 = hashlib.md5()
        t0 = time.perf_counter()
        etag = await client.put(BUCKET, KEY, generated_body(size, md5), size=size)
        put_s = time.perf_counter() - t0
        if etag and "-" not in etag and etag != md5.hexdigest():
            raise S3HttpError(f"PUT ETag {etag} is not the MD5 {md5.hexdigest()} of the body")
        sampler.mark("get")
        back = hashlib.md5()
        t0 = time.perf_counter()
        got = await client.get(BUCKET, KEY, sink=back.update)
        get_s = time.perf_counter() - t0
        sampler.mark("after")
        if got != size or back.hexdigest() != md5.hexdigest():
            raise S3HttpError(
                f"GET returned {got} bytes, MD5 {back.hexdigest()}; "
                f"sent {size}, MD5 {md5.hexdigest()}"
            )
    return {
        "put_s": round(put_s, 2),
        "get_s": round(get_s, 2),
        "put_mb_s": round(size / MB / put_s, 1),
        "get_mb_s": round(size / MB / get_s, 1),
        "etag": etag,
        "md5": md5.hexdigest(),
    }


def check_backend(backend: str, size: int, workdir: Path, interval: float = 0.1) -> dict[str, Any]:
    """PUT+GET `size` bytes through a gateway on `backend` ('local' or 'seaweedfs')."""
    weed: SeaweedServer | None = None
    try:
        if backend == "local":
            gateway = GatewayServer(f"file://{workdir / 'local-data'}", workdir)
        elif backend == "seaweedfs":
            weed = SeaweedServer(workdir / "weed").start()
            gateway = GatewayServer(
                weed.endpoint, workdir, backend_keys=(weed.access_key, weed.secret_key)
            )
        else:
            raise ValueError(f"unknown backend {backend!r}")
        with gateway, RssSampler(gateway.pid, interval) as sampler:
            sampler.mark("started")
            timing = asyncio.run(_check_one(gateway, size, sampler))
    finally:
        if weed is not None:
            weed.stop()
    peak = max(sampler.peaks.values())
    return {
        "backend": backend,
        "size": size,
        "rss_start_mb": round(sampler.peaks.get("started", 0) / MB, 1),
        "rss_peak_put_mb": round(sampler.peaks.get("put", 0) / MB, 1),
        "rss_peak_get_mb": round(sampler.peaks.get("get", 0) / MB, 1),
        "rss_peak_mb": round(peak / MB, 1),
        "rss_limit_mb": RSS_LIMIT / MB,
        "ok": peak < RSS_LIMIT,
        "samples": sampler.samples,
        **timing,
    }


def run(
    size: int = DEFAULT_SIZE,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    *,
    interval: float = 0.1,
    json_out: str | Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the check on each backend; a backend that fails is reported, not raised."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="s3latent-memcheck-"))
    results = []
    try:
        for backend in backends:
            sub = tmp / backend
            sub.mkdir(parents=True, exist_ok=True)
            say(f"memory check: {size / MB:.0f} MB through the gateway on {backend}")
            try:
                res = check_backend(backend, size, sub, interval)
            except (RuntimeError, S3HttpError, OSError) as exc:
                res = {"backend": backend, "size": size, "ok": False, "error": str(exc)[-2000:]}
            say(f"  {json.dumps(res)}")
            results.append(res)
            if workdir is None:
                shutil.rmtree(sub, ignore_errors=True)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "benchmark": "memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "sample_interval_s": interval,
        "results": results,
        "ok": all(r["ok"] for r in results),
    }
    if json_out:
        Path(json_out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """`s3latent bench memory`: exit 0 when every backend stayed under the RSS limit."""
    p = argparse.ArgumentParser(prog="s3latent bench memory", description=__doc__)
    p.add_argument("--size", default="2GB", help="object size (default 2GB = 2*10^9 bytes)")
    p.add_argument(
        "--backends", default=",".join(DEFAULT_BACKENDS), help="comma-separated: local, seaweedfs"
    )
    p.add_argument("--interval", type=float, default=0.1, help="RSS sampling period, seconds")
    p.add_argument("--json", dest="json_out", help="write the results here")
    p.add_argument("--workdir", help="keep data and gateway logs here")
    args = p.parse_args(argv)
    res = run(
        parse_size(args.size),
        [b for b in args.backends.split(",") if b],
        interval=args.interval,
        json_out=args.json_out,
        workdir=args.workdir,
    )
    for r in res["results"]:
        if "error" in r:
            print(f"{r['backend']}: FAILED: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        print(
            f"{r['backend']}: {r['size'] / MB:.0f} MB, peak RSS {r['rss_peak_mb']} MB "
            f"(put {r['rss_peak_put_mb']}, get {r['rss_peak_get_mb']}, "
            f"start {r['rss_start_mb']}; limit {r['rss_limit_mb']:.0f}), "
            f"PUT {r['put_s']} s ({r['put_mb_s']} MB/s), GET {r['get_s']} s "
            f"({r['get_mb_s']} MB/s): {'ok' if r['ok'] else 'OVER'}"
        )
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
