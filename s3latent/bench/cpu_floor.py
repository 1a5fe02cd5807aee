"""The CPU floor of a verifying S3 gateway in Python: what a request must cost, per op.

An nginx hop parses a request, opens (or reuses) a backend connection and relays bytes, in
C. A gateway that verifies what it stores also has to: verify the client's SigV4
signature, hash the body (MD5 for the ETag, SHA-256 when the client signed the payload),
and send its own signed request to the backend. This measures each of those pieces on
this machine, plus the least an aiohttp server spends to answer a request at all, so
their sum can be set next to nginx's CPU per op (docs/bench-gateway.md): if the sum is
already above what nginx spends, no amount of trimming the rest reaches the nginx hop.

Every number is CPU time (user + system) per operation:
- hashing and SigV4 verification: `time.thread_time` around a tight loop;
- the backend request (`DataPath`, the gateway's own signed client): the client
  process's CPU while it runs requests against a minimal asyncio server in another
  process (so the server's CPU is not counted; the kernel's loopback TCP work for what
  the client sends and receives is);
- the aiohttp front end: the CPU of a server process running a one-handler aiohttp app
  (GET answers the body, PUT reads it and drops it), read from /proc around the load.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from ..backends.s3_datapath import DataPath, iter_body
from ..s3api.auth import authenticate
from .gateway_bench import _proc_cpu_s
from .servers import free_port

KiB = 1024
MiB = 1024 * KiB
SIZES = (4 * KiB, 1 * MiB)
ACCESS, SECRET = "floor-access", "floor-secret-0123456789"

# A minimal HTTP/1.1 server (run with `python -c`): GET /N answers N bytes, PUT reads
# Content-Length bytes and answers 200. Keep-alive, no checks: it stands in for the backend.
_RAW_SERVER = r"""
import asyncio, sys
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf, self.need = t, b"", None
    def data_received(self, data):
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
                lines = head.split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v)
                self.method, self.path, self.need = method, path, length
            if len(self.buf) < self.need:
                return
            self.buf, self.need = self.buf[self.need:], None
            if self.method == "GET":
                n = int(self.path.rsplit("/", 1)[1])
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"x\"\r\n"
                             b"Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n" % n)
                self.t.write(BODIES.setdefault(n, b"x" * n))
            else:
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"x\"\r\n\r\n")
BODIES = {}
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
asyncio.run(main())
"""

# The least an aiohttp server does per request: the same front end the gateway runs on.
_AIOHTTP_SERVER = r"""
import sys
from aiohttp import web
BODIES = {}
async def handle(request):
    if request.method == "PUT":
        while await request.content.read(1 << 20):
            pass
        return web.Response(status=200, headers={"ETag": '"x"'})
    n = int(request.path.rsplit("/", 1)[1])
    return web.Response(body=BODIES.setdefault(n, b"x" * n))
app = web.Application(client_max_size=0)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def _per_op_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 200)):
        fn()
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n * 1e6


def hashing_us(size: int) -> dict[str, float]:
    """MD5 (the ETag) and SHA-256 (a signed payload) of one body of `size` bytes."""
    data = os.urandom(size)
    n = 20000 if size <= 64 * KiB else 200
    return {
        "md5": _per_op_us(lambda: hashlib.md5(data).hexdigest(), n),
        "sha256": _per_op_us(lambda: hashlib.sha256(data).hexdigest(), n),
    }


def sigv4_verify_us() -> float:
    """One header-signed request verified by the gateway's own `authenticate`."""
    url = "http://127.0.0.1:9000/bench-bucket/some/key-0001"
    req = AWSRequest(method="GET", url=url,
                     headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(req)
    headers = CIMultiDict(req.headers.items())  # as aiohttp hands them over
    headers["Host"] = "127.0.0.1:9000"
    users = {ACCESS: SECRET}
    now = datetime.now(UTC)

    def verify() -> None:
        authenticate("GET", "/bench-bucket/some/key-0001", "", headers, users, now=now)

    return _per_op_us(verify, 20000)


def _start(code: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)])
    deadline = time.monotonic() + 20
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("floor server did not start")


async def _load(run_one: Callable[[int], Any], n: int, concurrency: int) -> None:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await run_one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def backend_request_us(size: int, n: int, concurrency: int) -> dict[str, float]:
    """CPU of the gateway's signed data-path client per GET / PUT of `size` bytes.

    Also the CPU of the minimal asyncio server it talks to (`raw_server_GET`, ...): the
    least any Python server on asyncio spends to answer one request.
    """
    proc, port = _start(_RAW_SERVER)
    try:
        async def run() -> dict[str, float]:
            dp = DataPath(f"http://127.0.0.1:{port}", ACCESS, SECRET, "us-east-1",
                          max_connections=64, connect_timeout=5, read_timeout=30,
                          max_attempts=1)
            await dp.start()
            body = os.urandom(size)

            async def get(_: int) -> None:
                resp = await dp.request("GET", "b", f"k/{size}")
                async for _chunk in iter_body(resp):
                    pass
                resp.release()

            async def put(_: int) -> None:
                resp = await dp.request("PUT", "b", "k", body=body,
                                        headers={"Content-Length": str(size)})
                resp.release()

            out = {}
            for name, op in (("GET", get), ("PUT", put)):
                await _load(op, min(n, 200), concurrency)  # warm: connections open
                t0, s0 = time.process_time(), _proc_cpu_s(proc.pid)
                await _load(op, n, concurrency)
                out[name] = (time.process_time() - t0) / n * 1e6
                out[f"raw_server_{name}"] = (_proc_cpu_s(proc.pid) - s0) / n * 1e6
            await dp.close()
            return out

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait()


class _MinimalClient(asyncio.Protocol):
    """Keep-alive HTTP/1.1 on a bare asyncio protocol: one request at a time, bodies by
    Content-Length only. Not a usable client (no timeouts, errors, chunking): it shows what
    the data path's request would cost without aiohttp's client machinery."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.length: int | None = None
        self.done: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.length is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower() + b"\r\n"
            del self.buf[:end + 4]
            at = head.find(b"\r\ncontent-length:")
            self.length = int(head[at + 17:head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        if len(self.buf) >= self.length:
            body = bytes(self.buf[:self.length])
            del self.buf[:self.length]
            self.length = None
            assert self.done is not None
            self.done.set_result(body)

    async def request(self, head: bytes, body: bytes) -> bytes:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(head)
        if body:
            self.transport.write(body)
        return await self.done


def minimal_client_us(size: int, n: int, concurrency: int) -> dict[str, float]:
    """CPU per GET / PUT of `size` bytes for a signed request on `_MinimalClient`."""
    proc, port = _start(_RAW_SERVER)
    try:
        async def run() -> dict[str, float]:
            loop = asyncio.get_running_loop()
            signer = DataPath(f"http://127.0.0.1:{port}", ACCESS, SECRET, "us-east-1",
                              max_connections=1, connect_timeout=5, read_timeout=30,
                              max_attempts=1)
            conns = []
            for _ in range(concurrency):
                _, proto = await loop.create_connection(_MinimalClient, "127.0.0.1", port)
                conns.append(proto)
            body = os.urandom(size)

            async def one(conn: _MinimalClient, method: str) -> None:
                path = f"/b/k/{size}" if method == "GET" else "/b/k"
                headers = {"content-length": str(size)} if method == "PUT" else {}
                signer._sign(method, path, "", headers)
                head = "".join([f"{method} {path} HTTP/1.1\r\nHost: {signer.host}\r\n",
                                *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"])
                await conn.request(head.encode("latin-1"), body if method == "PUT" else b"")

            out = {}
            for method in ("GET", "PUT"):
                async def worker(conn: _MinimalClient, count: int, method: str = method) -> None:
                    for _ in range(count):
                        await one(conn, method)

                per = max(1, n // concurrency)
                await asyncio.gather(*(worker(c, min(per, 20)) for c in conns))  # warm
                t0 = time.process_time()
                await asyncio.gather(*(worker(c, per) for c in conns))
                out[method] = (time.process_time() - t0) / (per * concurrency) * 1e6
            for conn in conns:
                assert conn.transport is not None
                conn.transport.close()
            return out

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait()


def aiohttp_front_us(size: int, n: int, concurrency: int) -> dict[str, float]:
    """CPU of a one-handler aiohttp server per GET / PUT of `size` bytes (the front end)."""
    proc, port = _start(_AIOHTTP_SERVER)
    try:
        async def run() -> dict[str, float]:
            conn = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=conn) as session:
                body = os.urandom(size)
                url = f"http://127.0.0.1:{port}/b/{size}"

                async def get(_: int) -> None:
                    async with session.get(url) as r:
                        async for _chunk in r.content.iter_any():
                            pass

                async def put(_: int) -> None:
                    async with session.put(url, data=body) as r:
                        await r.read()

                out = {}
                for name, op in (("GET", get), ("PUT", put)):
                    await _load(op, min(n, 200), concurrency)
                    c0 = _proc_cpu_s(proc.pid)
                    await _load(op, n, concurrency)
                    out[name] = (_proc_cpu_s(proc.pid) - c0) / n * 1e6
                return out

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait()


def measure(n_small: int = 4000, n_large: int = 400, concurrency: int = 16) -> dict[str, Any]:
    """Every piece, per size and op, in microseconds of CPU."""
    verify = sigv4_verify_us()
    rows: dict[str, Any] = {"sigv4_verify_us": round(verify, 1), "sizes": {}}
    for size in SIZES:
        n = n_small if size < MiB else n_large
        hashes = hashing_us(size)
        backend = backend_request_us(size, n, concurrency)
        front = aiohttp_front_us(size, n, concurrency)
        minimal = minimal_client_us(size, n, concurrency)
        cell: dict[str, Any] = {}
        for op in ("GET", "PUT"):
            parts = {"aiohttp_front_end": front[op], "sigv4_verify": verify,
                     "backend_request_signed": backend[op]}
            if op == "PUT":
                parts["md5"] = hashes["md5"]
            floor = sum(parts.values())
            signed = floor + hashes["sha256"] if op == "PUT" else floor
            cell[op] = {"parts_us": {k: round(v, 1) for k, v in parts.items()},
                        "raw_asyncio_server_us": round(backend[f"raw_server_{op}"], 1),
                        "minimal_asyncio_client_us": round(minimal[op], 1),
                        # The same work with both HTTP ends on bare asyncio protocols.
                        "bare_asyncio_floor_us": round(
                            floor - front[op] - backend[op] + backend[f"raw_server_{op}"]
                            + minimal[op], 1),
                        "sha256_us": round(hashes["sha256"], 1),
                        "floor_us": round(floor, 1),
                        "floor_signed_payload_us": round(signed, 1)}
        rows["sizes"][str(size)] = cell
    return rows


def format_table(res: dict[str, Any]) -> str:
    lines = ["| op | size | aiohttp front end | SigV4 verify | backend request (signed) | "
             "MD5 | floor | + SHA-256 (signed payload) | minimal asyncio server | "
             "minimal asyncio client (signed) | floor on bare asyncio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, cell in res["sizes"].items():
        label = f"{int(size) // KiB} KiB" if int(size) < MiB else f"{int(size) // MiB} MiB"
        for op in ("GET", "PUT"):
            p = cell[op]["parts_us"]
            md5 = f"{p['md5']:.0f}" if "md5" in p else "-"
            lines.append(
                f"| {op} | {label} | {p['aiohttp_front_end']:.0f} | {p['sigv4_verify']:.0f} | "
                f"{p['backend_request_signed']:.0f} | {md5} | **{cell[op]['floor_us']:.0f}** | "
                f"{cell[op]['floor_signed_payload_us']:.0f} | "
                f"{cell[op]['raw_asyncio_server_us']:.0f} | "
                f"{cell[op]['minimal_asyncio_client_us']:.0f} | "
                f"{cell[op]['bare_asyncio_floor_us']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`s3latent bench floor`: print the table (µs of CPU per op), optionally save JSON."""
    p = argparse.ArgumentParser(prog="s3latent bench floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=4000, help="requests per 4 KiB cell")
    p.add_argument("--count-large", type=int, default=400, help="requests per 1 MiB cell")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    load0 = os.getloadavg()
    res = measure(args.count, args.count_large, args.concurrency)
    res["command"] = "s3latent bench floor " + " ".join(argv or sys.argv[1:])
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["loadavg_before_after"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    res["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(format_table(res))
    print(f"({res['seconds']} s, load {res['loadavg_before_after']})")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
