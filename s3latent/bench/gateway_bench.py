"""Gateway overhead benchmark: the same PUT/GET workload against s3latent and SeaweedFS.

Both targets are measured in one run, on one machine, with one client: the
gateway sits in front of the very SeaweedFS that is also measured directly, and
the two targets alternate in rounds (A B B A ...) so that machine noise lands on
both. The client is deliberately thin (aiohttp, SigV4 headers from botocore's
signer, UNSIGNED-PAYLOAD so no body is hashed, bodies read and dropped) because
the client, the gateway and SeaweedFS share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

from ..executables import find_executable
from .servers import GatewayServer, SeaweedServer

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
DEFAULT_SIZES = (4 * KiB, 1 * MiB, 64 * MiB)
DEFAULT_CONCURRENCY = (1, 16)
BUCKET = "s3latent-bench"
TARGETS = ("direct", "gateway")
# Acceptance target from the foundation issue: GET 1 MiB at 16 clients.
TARGET_SIZE = 1 * MiB
TARGET_CONCURRENCY = 16
TARGET_P50_RATIO = 1.3
TARGET_THROUGHPUT_RATIO = 0.8
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class S3HttpError(RuntimeError):
    """A non-2xx answer; the benchmark stops rather than time failures."""


class S3Client:
    """Minimal async S3 client: path-style URLs, SigV4 header auth, UNSIGNED-PAYLOAD.

    botocore's signer does the cryptography so the signatures are the SDK's; the
    rest of the SDK (serialisers, retries, event hooks) is left out to keep the
    client's CPU cost per request small and the same for every target.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        connections: int = 64,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._auth = SigV4Auth(Credentials(access_key, secret_key), "s3", region)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3Client:
        connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _signed(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[URL, dict[str, str]]:
        url = self.endpoint + path
        req = AWSRequest(
            method=method,
            url=url,
            headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", **(headers or {})},
        )
        self._auth.add_auth(req)
        return URL(url, encoded=True), dict(req.headers.items())

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with S3Client(...)`"
        return self._session

    async def create_bucket(self, bucket: str) -> None:
        url, headers = self._signed("PUT", f"/{bucket}")
        async with self.session.put(url, headers=headers) as r:
            body = await r.read()
            if r.status != 200 and b"BucketAlready" not in body:
                raise S3HttpError(f"CreateBucket {bucket}: {r.status} {body[:300]!r}")

    async def put(
        self, bucket: str, key: str, body: bytes | AsyncIterable[bytes], size: int | None = None
    ) -> str:
        """PUT an object; `body` may stream (then `size` is its length). Returns the ETag."""
        length = len(body) if isinstance(body, bytes | bytearray | memoryview) else size
        if length is None:
            raise ValueError("a streamed body needs its size")
        url, headers = self._signed("PUT", f"/{bucket}/{key}", {"Content-Length": str(length)})
        async with self.session.put(url, data=body, headers=headers) as r:
            answer = await r.read()
            if r.status != 200:
                raise S3HttpError(f"PUT {key}: {r.status} {answer[:300]!r}")
            return r.headers.get("ETag", "").strip('"')

    async def get(
        self, bucket: str, key: str, sink: Callable[[bytes], object] | None = None
    ) -> int:
        """GET an object, handing each chunk to `sink` (or dropping it); returns its length."""
        url, headers = self._signed("GET", f"/{bucket}/{key}")
        async with self.session.get(url, headers=headers) as r:
            if r.status != 200:
                raise S3HttpError(f"GET {key}: {r.status} {(await r.read())[:300]!r}")
            n = 0
            async for chunk in r.content.iter_any():
                n += len(chunk)
                if sink is not None:
                    sink(chunk)
            expected = r.content_length
            if expected is not None and n != expected:
                raise S3HttpError(f"GET {key}: {n} of {expected} bytes")
            return n


def _proc_cpu_s(pid: int) -> float:
    """user+system CPU seconds of a process (Linux /proc), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class _Tally:
    """What one target did in one cell, summed over its rounds."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    bytes: int = 0
    cpu_s: dict[str, float] = field(
        default_factory=lambda: {"client": 0.0, "gateway": 0.0, "seaweedfs": 0.0}
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def _summary(t: _Tally) -> dict[str, Any]:
    n = len(t.latencies)
    wall = t.wall_s or float("nan")
    return {
        "n": n,
        "p50_ms": round(percentile(t.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(t.latencies, 99) * 1000, 3),
        "mean_ms": round(sum(t.latencies) / n * 1000, 3) if n else float("nan"),
        "bytes": t.bytes,
        "mb_s": round(t.bytes / MB / wall, 3),
        "ops_s": round(n / wall, 1),
        "wall_s": round(t.wall_s, 6),
        "cpu_ms_per_op": {
            k: round(v / n * 1000, 3) if n else float("nan") for k, v in t.cpu_s.items()
        },
    }


def default_count(size: int, concurrency: int) -> int:
    """Requests per target per cell: many for small objects (a stable p99), few for big."""
    cap = 1500 if concurrency == 1 else 2000
    return max(concurrency, min(cap, (384 * MiB) // size))


async def _run_round(
    op: Callable[[int], Awaitable[int]],
    indices: range,
    concurrency: int,
    deadline: float,
    tally: _Tally,
) -> None:
    it = iter(indices)

    async def worker() -> None:
        for i in it:  # one shared iterator: each index is taken by exactly one worker
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            n = await op(i)  # not `tally.bytes += await ...`: that reads before the await
            tally.latencies.append(time.perf_counter() - t0)
            tally.bytes += n

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.wall_s += time.perf_counter() - t0


class _Bench:
    def __init__(
        self,
        clients: dict[str, S3Client],
        pids: dict[str, int],
        *,
        rounds: int,
        duration: float | None,
        log: Callable[[str], None],
    ) -> None:
        self.clients = clients
        self.pids = pids
        self.rounds = rounds
        self.duration = duration
        self.log = log

    def _cpu(self) -> dict[str, float]:
        out = {name: _proc_cpu_s(pid) for name, pid in self.pids.items()}
        out["client"] = time.process_time()
        return out

    def _op(
        self, target: str, op: str, size: int, payload: bytes, nkeys: int
    ) -> Callable[[int], Awaitable[int]]:
        client = self.clients[target]
        if op == "PUT":

            async def put(i: int) -> int:
                await client.put(BUCKET, f"put/{target}/{size}/{i % nkeys}", payload)
                return size

            return put

        async def get(i: int) -> int:
            return await client.get(BUCKET, f"get/{size}/{i % nkeys}")

        return get

    async def cell(
        self, op: str, size: int, concurrency: int, count: int, payload: bytes, nkeys: int
    ) -> dict[str, Any]:
        tallies = {t: _Tally() for t in TARGETS}
        ops = {t: self._op(t, op, size, payload, nkeys) for t in TARGETS}
        for t in TARGETS:  # warm-up: open the connections, untimed
            await _run_round(ops[t], range(concurrency), concurrency, float("inf"), _Tally())
        # A round never has fewer requests than clients, or it would run below `concurrency`.
        rounds = max(1, min(self.rounds, count // concurrency))
        per_round = -(-count // rounds)
        budget = (self.duration / rounds / len(TARGETS)) if self.duration else None
        for r in range(rounds):
            order = TARGETS if r % 2 == 0 else TARGETS[::-1]
            for t in order:
                start = r * per_round
                indices = range(start, min(count, start + per_round))
                deadline = time.perf_counter() + budget if budget else float("inf")
                before = self._cpu()
                await _run_round(ops[t], indices, concurrency, deadline, tallies[t])
                after = self._cpu()
                for k in tallies[t].cpu_s:
                    tallies[t].cpu_s[k] += after[k] - before[k]
        result: dict[str, Any] = {
            "op": op,
            "size": size,
            "concurrency": concurrency,
            "rounds": rounds,
        }
        for t in TARGETS:
            result[t] = _summary(tallies[t])
        d, g = result["direct"], result["gateway"]
        result["ratio"] = {
            "p50": round(g["p50_ms"] / d["p50_ms"], 3),
            "p99": round(g["p99_ms"] / d["p99_ms"], 3),
            "throughput": round(g["mb_s"] / d["mb_s"], 3),
        }
        return result


def _payload(size: int) -> bytes:
    return os.urandom(size)


async def _bench(
    gateway: GatewayServer,
    weed: SeaweedServer,
    sizes: Sequence[int],
    concurrency: Sequence[int],
    count: int | None,
    rounds: int,
    duration: float | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    conns = max(concurrency)
    async with (
        S3Client(
            gateway.endpoint, gateway.access_key, gateway.secret_key, connections=conns
        ) as gw_client,
        S3Client(
            weed.endpoint, weed.access_key, weed.secret_key, connections=conns
        ) as direct_client,
    ):
        await gw_client.create_bucket(BUCKET)
        assert gateway.proc is not None and weed.proc is not None
        bench = _Bench(
            {"gateway": gw_client, "direct": direct_client},
            {"gateway": gateway.proc.pid, "seaweedfs": weed.proc.pid},
            rounds=rounds,
            duration=duration,
            log=log,
        )
        cells = []
        for size in sizes:
            payload = _payload(size)
            nkeys = max(max(concurrency), min(64, GiB // size))
            # GET objects are written through the gateway once and read by both targets.
            for start in range(0, nkeys, conns):
                await asyncio.gather(
                    *(
                        gw_client.put(BUCKET, f"get/{size}/{i}", payload)
                        for i in range(start, min(nkeys, start + conns))
                    )
                )
            for op in ("PUT", "GET"):
                for c in concurrency:
                    n = count or default_count(size, c)
                    t0 = time.perf_counter()
                    res = await bench.cell(op, size, c, n, payload, nkeys)
                    log(
                        f"  {op} {_size_label(size)} x{c}: n={res['direct']['n']}/"
                        f"{res['gateway']['n']} in {time.perf_counter() - t0:.1f}s, "
                        f"p50 ratio {res['ratio']['p50']}, throughput ratio "
                        f"{res['ratio']['throughput']}"
                    )
                    cells.append(res)
            del payload
        return cells


def _size_label(size: int) -> str:
    if size % MiB == 0:
        return f"{size // MiB} MiB"
    if size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} B"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    info["nproc_available"] = len(os.sched_getaffinity(0))
    weed = find_executable("weed")
    if weed:
        try:
            out = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=10)
            info["seaweedfs"] = out.stdout.strip().splitlines()[0] if out.stdout else ""
        except (OSError, subprocess.SubprocessError):
            pass
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("aiohttp", "aiobotocore", "botocore"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


def target_check(cells: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The foundation issue's acceptance target, read off the GET 1 MiB cells."""
    by_c = {c["concurrency"]: c for c in cells if c["op"] == "GET" and c["size"] == TARGET_SIZE}
    cell = by_c.get(TARGET_CONCURRENCY)
    if cell is None:
        return None
    p50, thr = cell["ratio"]["p50"], cell["ratio"]["throughput"]
    out = {
        "cell": f"GET {_size_label(TARGET_SIZE)} x{TARGET_CONCURRENCY}",
        "p50_ratio": p50,
        "p50_ratio_max": TARGET_P50_RATIO,
        "throughput_ratio": thr,
        "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
        "met": p50 <= TARGET_P50_RATIO and thr >= TARGET_THROUGHPUT_RATIO,
    }
    if 1 in by_c:
        out["p50_ratio_1_client"] = by_c[1]["ratio"]["p50"]
    return out


def format_table(cells: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per (op, size, concurrency)."""
    head = (
        "| op | size | clients | direct p50 ms | direct p99 ms | direct MB/s | direct ops/s "
        "| gw p50 ms | gw p99 ms | gw MB/s | gw ops/s | p50 x | p99 x | thr x "
        "| gw CPU ms/op |"
    )
    lines = [head, "|" + "---|" * 15]
    for c in cells:
        d, g, r = c["direct"], c["gateway"], c["ratio"]
        lines.append(
            f"| {c['op']} | {_size_label(c['size'])} | {c['concurrency']} "
            f"| {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['mb_s']:.1f} | {d['ops_s']:.0f} "
            f"| {g['p50_ms']:.2f} | {g['p99_ms']:.2f} | {g['mb_s']:.1f} | {g['ops_s']:.0f} "
            f"| {r['p50']:.2f} | {r['p99']:.2f} | {r['throughput']:.2f} "
            f"| {g['cpu_ms_per_op']['gateway']:.2f} |"
        )
    return "\n".join(lines)


def run(
    sizes: Sequence[int] = DEFAULT_SIZES,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    *,
    count: int | None = None,
    duration: float | None = None,
    rounds: int = 4,
    json_out: str | Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start SeaweedFS and a gateway over it, measure every cell on both, return the results.

    `count` is requests per target per cell (default: by size, see default_count);
    `duration` caps each cell's seconds in all (both targets), so runs stay bounded.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="s3latent-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with (
            SeaweedServer(tmp / "weed") as weed,
            GatewayServer(
                weed.endpoint, tmp, backend_keys=(weed.access_key, weed.secret_key)
            ) as gateway,
        ):
            say(f"SeaweedFS {weed.endpoint}, gateway {gateway.endpoint}")
            cells = asyncio.run(
                _bench(gateway, weed, list(sizes), list(concurrency), count, rounds, duration, say)
            )
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "gateway",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "sizes": list(sizes),
            "concurrency": list(concurrency),
            "count": count,
            "duration_s": duration,
            "rounds": rounds,
            "payload": "UNSIGNED-PAYLOAD",
            "client": "aiohttp + botocore SigV4Auth, one process",
            "mb": "10^6 bytes",
        },
        "cells": cells,
        "target": target_check(cells),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_size(text: str) -> int:
    """'4KiB', '1MiB', '64MiB', '20MB' or a plain byte count."""
    t = text.strip().lower().replace(" ", "")
    for suffix, mult in (
        ("kib", KiB),
        ("mib", MiB),
        ("gib", GiB),
        ("kb", 1000),
        ("mb", MB),
        ("gb", 1000 * MB),
        ("k", KiB),
        ("m", MiB),
        ("g", GiB),
        ("b", 1),
    ):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def main(argv: list[str] | None = None) -> int:
    """`s3latent bench gateway`: print the table, optionally write JSON."""
    p = argparse.ArgumentParser(prog="s3latent bench gateway", description=__doc__)
    p.add_argument("--sizes", default="4KiB,1MiB,64MiB", help="comma-separated object sizes")
    p.add_argument("--concurrency", default="1,16", help="comma-separated client counts")
    p.add_argument("--count", type=int, help="requests per target per cell (default: by size)")
    p.add_argument("--duration", type=float, help="seconds cap per cell (both targets)")
    p.add_argument("--rounds", type=int, default=4, help="alternations between the targets")
    p.add_argument("--json", dest="json_out", help="write the results here")
    p.add_argument("--workdir", help="keep SeaweedFS data and the gateway log here")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    conc = [int(c) for c in args.concurrency.split(",") if c]
    try:
        res = run(
            sizes,
            conc,
            count=args.count,
            duration=args.duration,
            rounds=args.rounds,
            json_out=args.json_out,
            workdir=args.workdir,
        )
    except (RuntimeError, S3HttpError) as exc:
        print(f"s3latent bench gateway: {exc}", file=sys.stderr)
        return 1
    print(format_table(res["cells"]))
    if res["target"]:
        t = res["target"]
        print(
            f"\ntarget ({t['cell']}): p50 {t['p50_ratio']}x (<= {t['p50_ratio_max']}), "
            f"throughput {t['throughput_ratio']}x (>= {t['throughput_ratio_min']}): "
            f"{'met' if t['met'] else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
