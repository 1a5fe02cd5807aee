"""Where the gateway's CPU goes, per op: a CPU-time sampler around a real gateway.

py-spy samples threads by wall clock and, on this machine, also counts a thread that waits
for a core (or sits in epoll) as busy, which inflates whatever precedes a preemption (socket
sends that wake the receiver). This sampler counts process CPU time instead: SIGPROF fires
after every `interval` of user+system CPU (ITIMER_PROF, in practice every kernel tick, 4 ms
here) and the main thread's Python stack is counted; a syscall's CPU is charged to the
Python frame that made it. The gateway is one thread, so nearly all its CPU is in the
main thread.

`s3latent bench profile` starts SeaweedFS, then for each op (GET/PUT x 4 KiB/1 MiB) a
gateway under the sampler, drives it with the gateway bench's client for `--seconds`, and
attributes the samples to categories (`CATEGORIES`: the first frame from the leaf upwards
that belongs to one decides; socket sends are split by who sends). Startup samples
(imports, the backend client's setup) are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import json
import os
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .gateway_bench import S3Client, _proc_cpu_s
from .servers import GATEWAY_ACCESS_KEY, GATEWAY_SECRET_KEY, GatewayServer, SeaweedServer

KiB = 1024
MiB = 1024 * KiB
OPS = {"GET4K": ("GET", 4 * KiB), "PUT4K": ("PUT", 4 * KiB),
       "GET1M": ("GET", MiB), "PUT1M": ("PUT", MiB)}
BUCKET = "profile"

# (substring of a frame, category), tried per frame from the leaf upwards.
CATEGORIES = [
    ("prometheus_client", "metrics (prometheus-client)"),
    ("logging/__init__", "access log line (logging)"),
    ("DataPath._sign", "backend request signing (SigV4)"),
    ("botocore", "backend client: aiobotocore (bucket checks, background sweep)"),
    ("s3api/auth.py", "SigV4 verification (auth.py)"),
    ("s3api/sigv2.py", "SigV4 verification (auth.py)"),
    ("s3api/payload.py", "request body read + MD5 (payload.py)"),
    ("_Spool", "PUT body join for the backend request (backends/s3.py)"),
    ("s3api/access.py", "authorization (access.py, policy, ACL)"),
    ("s3api/policy.py", "authorization (access.py, policy, ACL)"),
    ("s3api/acl.py", "authorization (access.py, policy, ACL)"),
    ("s3_datapath.py", "backend client: aiohttp client (data path)"),
    ("aiohttp/client", "backend client: aiohttp client (data path)"),
    ("aiohttp/connector", "backend client: aiohttp client (data path)"),
    ("aiohttp/web_response", "response headers + body (aiohttp web_response)"),
    ("_Body.", "response headers + body (aiohttp web_response)"),
    ("aiohttp/web_", "HTTP server: request parsing + dispatch (aiohttp web)"),
    ("aiohttp/http_parser", "HTTP server: request parsing + dispatch (aiohttp web)"),
    ("aiohttp/streams", "HTTP server: request parsing + dispatch (aiohttp web)"),
    ("aiosignal", "HTTP server: request parsing + dispatch (aiohttp web)"),
    ("s3api/connections.py", "HTTP server: request parsing + dispatch (aiohttp web)"),
    ("backends/s3.py", "backend glue: headers -> ObjectInfo (backends/s3.py)"),
    ("s3latent/objects/", "object layer (objects/, caches, bucket records)"),
    ("s3latent/cache/", "object layer (objects/, caches, bucket records)"),
    ("singleflight", "object layer (objects/, caches, bucket records)"),
    ("s3api/handlers", "handlers (handlers/objects.py)"),
    ("s3latent/", "front end: ids, routing, names, conditions, dates (s3api/)"),
]
_NEUTRAL = ("asyncio/", "selectors.py", "http_writer", "_weakrefset", "contextvars",
            "s3latent/sigv4.py", "s3latent/httpdate.py",  # their caller decides
            "s3latent/cli.py", "s3latent/__main__.py", "runpy",  # the roots of every stack
            "s3latent/bench/")
EVENT_LOOP = "event loop (asyncio: callbacks, timers, tasks)"


def classify(frames: list[str]) -> str:
    """The category of one sampled stack (root first)."""
    leaf = frames[-1]
    if leaf.startswith(("_SelectorSocketTransport.write", "_SelectorSocketTransport._write")):
        owner = _owner(frames[:-1])
        side = "to the backend" if owner.startswith("backend") else "to the client"
        return f"socket send() {side} (kernel, loopback TCP)"
    if leaf.startswith("_SelectorSocketTransport._read_ready"):
        return "socket recv() (kernel)"
    if leaf.startswith("EpollSelector.select"):
        return "event loop: epoll"
    return _owner(frames)


def _owner(frames: list[str]) -> str:
    for frame in reversed(frames):
        if any(n in frame for n in _NEUTRAL):
            continue
        for pattern, category in CATEGORIES:
            if pattern in frame:
                return category
    return EVENT_LOOP


def _is_startup(stack: str) -> bool:
    return "importlib" in stack or "S3Backend.start" in stack or (
        "_run_once" not in stack and "Thread" not in stack)


def attribute(path: Path) -> tuple[dict[str, int], int]:
    """(samples per category, samples in all) of one sampler output, startup left out."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if _is_startup(stack) or "on_prof" in stack:  # the sampler's own work: not the gateway's
            continue
        counts[classify(stack.split(";"))] += int(n)
    return dict(counts), sum(counts.values())


# -- the sampler, run in the gateway's process -----------------------------------------------

def _frame_name(frame: FrameType) -> str:
    code = frame.f_code
    name = code.co_filename
    for marker in ("site-packages/", "/python3.11/", "/python3.12/", "/python3.13/"):
        name = name.split(marker)[-1]
    if "/s3latent/" in name:
        name = "s3latent/" + name.split("/s3latent/", 1)[1]
    return f"{code.co_qualname} ({name}:{frame.f_lineno})"


def sample(out: str, interval: float, argv: list[str]) -> None:
    """Run `argv` (`-m module args...`) here with SIGPROF sampling; stacks to `out` at exit."""
    counts: collections.Counter[str] = collections.Counter()

    def on_prof(signum: int, frame: FrameType | None) -> None:
        parts = []
        while frame is not None:
            parts.append(_frame_name(frame))
            frame = frame.f_back
        counts[";".join(reversed(parts))] += 1

    def dump() -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        with open(out, "w") as f:
            for stack, n in counts.items():
                f.write(f"{stack} {n}\n")

    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit("usage: --sample OUT -m MODULE [ARGS...]")
    atexit.register(dump)
    signal.signal(signal.SIGPROF, on_prof)
    sys.argv = [argv[1], *argv[2:]]
    signal.setitimer(signal.ITIMER_PROF, interval, interval)
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


# -- the driver ----------------------------------------------------------------------------

async def _drive(endpoint: str, op: str, size: int, seconds: float, concurrency: int,
                 pid: int) -> dict[str, float]:
    async with S3Client(endpoint, GATEWAY_ACCESS_KEY, GATEWAY_SECRET_KEY,
                        connections=concurrency) as client:
        await client.create_bucket(BUCKET)
        body = os.urandom(size)
        await asyncio.gather(*(client.put(BUCKET, f"k{i}", body) for i in range(concurrency)))
        await asyncio.gather(*(client.get(BUCKET, f"k{i}") for i in range(concurrency)))
        done = 0
        cpu0, t0 = _proc_cpu_s(pid), time.monotonic()
        stop = t0 + seconds

        async def worker(i: int) -> None:
            nonlocal done
            while time.monotonic() < stop:
                if op == "GET":
                    await client.get(BUCKET, f"k{i}")
                else:
                    await client.put(BUCKET, f"k{i}", body)
                done += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        cpu, wall = _proc_cpu_s(pid) - cpu0, time.monotonic() - t0
        return {"ops": done, "ops_per_s": round(done / wall, 1),
                "gateway_cpu_ms_per_op": round(cpu * 1000 / max(done, 1), 3)}


def run(ops: list[str], seconds: float, concurrency: int, outdir: Path) -> dict[str, Any]:
    """Profile each op on its own gateway; per op the CPU per request and the shares."""
    outdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with SeaweedServer() as weed:
        for name in ops:
            op, size = OPS[name]
            raw = outdir / f"{name}.stacks"
            workdir = Path(tempfile.mkdtemp(prefix="s3latent-profile-"))
            gw = GatewayServer(weed.endpoint, workdir,
                               backend_keys=(weed.access_key, weed.secret_key),
                               python=[sys.executable, "-m", "s3latent.bench.gateway_profile",
                                       "--sample", str(raw), "--"])
            with gw:
                measured = asyncio.run(_drive(gw.endpoint, op, size, seconds, concurrency,
                                              gw.pid))
            counts, total = attribute(raw)
            per_op = measured["gateway_cpu_ms_per_op"]
            results[name] = {**measured, "samples": total, "categories": {
                cat: {"share": round(n / total, 4), "ms_per_op": round(per_op * n / total, 3)}
                for cat, n in sorted(counts.items(), key=lambda kv: -kv[1])}}
    return results


def format_table(results: dict[str, Any]) -> str:
    """Markdown: one row per category, per op its share of the CPU and ms per request."""
    names = list(results)
    cats: dict[str, float] = collections.defaultdict(float)
    for r in results.values():
        for cat, v in r["categories"].items():
            cats[cat] += v["share"]
    lines = ["| where the CPU goes | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names),
             "| **gateway CPU per request** | " + " | ".join(
                 f"**{results[n]['gateway_cpu_ms_per_op']:.2f} ms**" for n in names) + " |"]
    for cat in sorted(cats, key=lambda c: -cats[c]):
        cells = []
        for n in names:
            v = results[n]["categories"].get(cat)
            cells.append(f"{100 * v['share']:.1f}% ({1000 * v['ms_per_op']:.0f} µs)"
                         if v else "")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    lines.append("| samples (CPU ticks) | " + " | ".join(
        str(results[n]["samples"]) for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`s3latent bench profile`, or the sampler itself (`--sample OUT -- -m MODULE ...`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--sample"]:
        out, rest = argv[1], argv[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        sample(out, 0.001, rest)
        return 0
    p = argparse.ArgumentParser(prog="s3latent bench profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated: " + ", ".join(OPS))
    p.add_argument("--seconds", type=float, default=20.0, help="load per op")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--outdir", default=None, help="keep the raw stacks here")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    outdir = Path(args.outdir or tempfile.mkdtemp(prefix="s3latent-profile-out-"))
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    results = run(args.ops.split(","), args.seconds, args.concurrency, outdir)
    res = {"command": "s3latent bench profile " + " ".join(argv), "ops": results,
           "seconds": round(time.monotonic() - t0, 1),
           "loadavg_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    print(format_table(results))
    print(f"({res['seconds']} s, load {res['loadavg_before_after']}, raw stacks in {outdir})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
