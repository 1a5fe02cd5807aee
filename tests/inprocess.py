"""The real gateway in the test's own process and event loop, for fast handler tests.

`serve_gateway` wires the gateway exactly as `s3latent serve` does (config loaded by
`load_config` from TOML text, `build_gateway`, `make_app`) over the local backend in
a temp dir, and serves it with aiohttp's TestServer on 127.0.0.1. Tests then talk
HTTP to it: boto3 (synchronous, so it runs on a worker thread while the server
keeps running on the test's loop) or raw requests signed by tests/sigv4_client.

A failing handler shows up as a plain traceback in the test's log, and a test
costs milliseconds instead of a process start. The subprocess tests
(tests/gateway.py) stay the contract check against real clients.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiohttp
import boto3
from aiohttp.test_utils import TestServer
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from multidict import CIMultiDict

from s3latent.cli import build_gateway
from s3latent.config import load_config
from s3latent.s3api.gateway import Gateway
from s3latent.s3api.server import make_app
from tests.sigv4_client import ACCESS_KEY, REGION, SECRET_KEY, sign

T = TypeVar("T")

# One botocore session for all clients: it caches the loaded service model, so a
# client costs about a millisecond instead of a tenth of a second.
_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()
# Thread pools the decode services start (s3latent.decode): joined at shutdown.
_POOL_THREADS = re.compile(r"^(render|decode-)")


class Reply(NamedTuple):
    """One raw HTTP exchange's answer (unpacks as status, headers, body)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def error_code(self) -> str | None:
        """<Code> of an S3 error body, or None."""
        m = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return m.group(1).decode() if m else None


class InProcessGateway:
    """A served gateway and the ways a test talks to it."""

    def __init__(self, gateway: Gateway, server: TestServer, session: aiohttp.ClientSession,
                 data_dir: Path) -> None:
        self.gateway = gateway
        self.server = server
        self.session = session
        self.data_dir = data_dir
        self.s3 = self.client()

    @property
    def backend(self) -> Any:
        return self.gateway.store.backend

    @property
    def store(self) -> Any:
        """The one store the handlers use (`gw.store`): latent-aware with build_gateway."""
        return self.gateway.store

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    def client(self, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
               **config: Any) -> Any:
        """boto3 S3 client, path style, no retries (a failure is the test's to see)."""
        cfg = BotoConfig(s3={"addressing_style": config.pop("addressing_style", "path")},
                         retries={"max_attempts": config.pop("max_attempts", 1)},
                         connect_timeout=5, read_timeout=30, **config)
        with _SESSION_LOCK:
            return _SESSION.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                   aws_access_key_id=access_key,
                                   aws_secret_access_key=secret_key, config=cfg)

    async def run(self, fn: Callable[[Any], T], client: Any = None) -> T:
        """`fn(boto3 client)` on a worker thread, so the server answers meanwhile.

        Read streaming bodies inside `fn` (`...["Body"].read()`): reading one on the
        loop's thread would wait for a server that cannot run.
        """
        return await asyncio.to_thread(fn, client or self.s3)

    async def error(self, fn: Callable[[Any], Any], client: Any = None) -> dict[str, Any]:
        """The response of a call that must fail with a ClientError."""

        def call(s3: Any) -> dict[str, Any]:
            try:
                fn(s3)
            except ClientError as exc:
                return dict(exc.response)
            raise AssertionError("the call succeeded; an S3 error was expected")

        return await self.run(call, client)

    async def call(self, method: str, path: str, *, query: str | Sequence[tuple[str, str]] = "",
                   body: bytes = b"", headers: Mapping[str, str] | None = None,
                   checksum: str | None = None, secret: str = SECRET_KEY,
                   access_key: str = ACCESS_KEY) -> Reply:
        """A SigV4-signed raw request (tests/sigv4_client): what boto3 cannot send."""
        raw = sign(method, path, query=query, headers=headers or {}, body=body,
                   host=self.host, checksum=checksum, secret=secret, access_key=access_key)
        return await self.send(method, raw.target, headers=raw.headers, body=raw.body)

    async def send(self, method: str, target: str, *,
                   headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
                   body: bytes | aiohttp.FormData = b"") -> Reply:
        """An unsigned (or already signed) request to `target` (path and query)."""
        async with self.session.request(method, self.endpoint + target,
                                        headers=CIMultiDict(headers), data=body or None,
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
            data = await resp.read()
            return Reply(resp.status, resp.headers.copy(), data)

    async def metrics(self) -> str:
        """The Prometheus text of /metrics (unsigned, as a scraper reads it)."""
        reply = await self.send("GET", "/metrics")
        assert reply.status == 200, reply
        return reply.body.decode()

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics; 0.0 when it has not been observed yet."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.compile(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", re.MULTILINE)
        for m in pattern.finditer(await self.metrics()):
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
        return 0.0

    async def settle(self) -> None:
        """Wait until background conversions and index repairs are done.

        The latent store queues a conversion when either key of a pair is written
        (before the PUT answers), so after the PUTs a test awaits this instead of
        polling HEAD.
        """
        store = self.store
        converter = getattr(store, "converter", None)
        for _ in range(10):  # a conversion can queue index repairs and vice versa
            if converter is not None:
                await converter.drain()
            if hasattr(store, "settle"):
                await store.settle()
            if converter is None or converter.idle.is_set():
                return
        raise AssertionError("background work did not settle")


def config_text(*, models: Mapping[str, Mapping[str, str]] | None = None,
                codec: str | None = None, extra: str = "") -> str:
    """TOML for `serve_gateway`: models by name, the default bucket codec, more tables."""
    lines = []
    for name, table in (models or {}).items():
        lines.append(f"[models.{name}]")
        lines += [f'{k} = "{v}"' for k, v in table.items()]
    if codec is not None:
        lines += ['[buckets."*"]', f'codec = "{codec}"']
    return "\n".join(lines) + "\n" + extra


@asynccontextmanager
async def serve_gateway(tmp_path: Path, config: str = "") -> AsyncIterator[InProcessGateway]:
    """The gateway on a local backend under `tmp_path`, configured by TOML `config`.

    Everything is stopped on exit: client session, server (and with it the object
    layer's workers, sweeper and decode decoding, via the app's cleanup), and the
    decode thread pools are joined.
    """
    cfg_file = tmp_path / "s3latent.toml"
    cfg_file.write_text(config)
    cfg = load_config(cfg_file, env={"S3LATENT_ACCESS_KEY": ACCESS_KEY,
                                     "S3LATENT_SECRET_KEY": SECRET_KEY},
                      backend=f"file://{tmp_path / 'data'}", listen="127.0.0.1:0")
    gw = build_gateway(cfg)
    server = TestServer(make_app(gw), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield InProcessGateway(gw, server, session, tmp_path / "data")
    finally:
        await session.close()
        await server.close()
        await _join_pool_threads()


async def _join_pool_threads(timeout: float = 10.0) -> None:
    """The decode services shut their pools down without waiting; wait here, so no test leaks
    a thread into the next."""
    for thread in threading.enumerate():
        if _POOL_THREADS.match(thread.name):
            await asyncio.to_thread(thread.join, timeout)
            assert not thread.is_alive(), f"thread {thread.name} still running"
