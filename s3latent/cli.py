"""`s3latent` command line: serve, convert, inspect, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .config import EVENT_LOOPS, Config, ConfigError, load_config

# `s3latent NAME ...` -> s3latent.tools.NAME.main(argv)
TOOLS = {
    "convert": "convert image + sidecar pairs under s3://bucket/prefix (see --help)",
    "inspect": "show a latent container's header: s3latent inspect s3://bucket/key",
}
# `s3latent bench NAME ...` -> module with main(argv) -> int
BENCHMARKS = {
    "cluster": "s3latent.bench.cluster_bench",
    "decode-memory": "s3latent.bench.decode_memory",
    "determinism": "s3latent.bench.determinism",
    "encoders": "s3latent.bench.encoder_study",
    "floor": "s3latent.bench.cpu_floor",
    "engines": "s3latent.bench.engine_study",
    "gpu": "s3latent.bench.gpu_bench",
    "gateway": "s3latent.bench.gateway_bench",
    "listing": "s3latent.bench.listing_bench",
    "memory": "s3latent.bench.memory_check",
    "policies": "s3latent.bench.policy_compare",
    "profile": "s3latent.bench.gateway_profile",
    "storage": "s3latent.bench.storage_bench",
    "trace": "s3latent.bench.trace_bench",
}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "operation", "status", "ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop the server runs on: uvloop's (libuv) when chosen or, for "auto", installed.

    A switch rather than a default: on the 2-core bench machine uvloop cut the CPU of a
    4 KiB PUT by ~10% but did not speed up 1 MiB GETs (docs/bench-gateway.md); a bigger
    machine may judge differently. None is asyncio's default loop.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop = \"uvloop\" but uvloop is not installed "
                              "(pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def build_backend(cfg: Config) -> Any:
    """The backend a config names, with its timeouts, retries and meta bucket (not started)."""
    from .backends.s3 import backend_from_url

    return backend_from_url(cfg.backend, cfg.backend_access_key, cfg.backend_secret_key,
                            cfg.region, connect_timeout=cfg.backend_connect_timeout_s,
                            read_timeout=cfg.backend_read_timeout_s,
                            max_attempts=cfg.backend_max_attempts,
                            meta_bucket=cfg.backend_meta_bucket)


def build_gateway(cfg: Config, *, background: bool = True) -> Any:
    """Backend, the latent-aware store over it, and the gateway for a config.

    `background=False` leaves out the conversion workers and the sweeper (tools
    that drive the converter themselves).
    """
    from prometheus_client import CollectorRegistry

    from .decode.services import DecodeServices
    from .objects.latent_store import LatentStore
    from .s3api.gateway import Gateway

    backend = build_backend(cfg)
    registry = CollectorRegistry()
    cache = None
    if cfg.cache.memory > 0:
        from .cache.readpath import ReadCache

        cache = ReadCache(cfg.cache, registry)
    decoding = DecodeServices(cfg, registry)
    store = LatentStore(backend, cfg, decoding, registry=registry, background=background,
                        cache=cache)
    cluster = None
    if cfg.cluster is not None and background:
        from .cluster.node import Cluster

        cluster = Cluster(cfg, store, decoding, registry=registry)
        store.add_write_listener(cluster.on_write)  # owners drop what a write replaced
        store.ctx.offload = cluster.offload  # decode spillover
    return Gateway(cfg, store, registry=registry, cluster=cluster,
                   keyring=build_keyring(cfg, backend))


def build_keyring(cfg: Config, backend: Any) -> Any:
    """The SSE-S3 master keys (docs/encryption.md): the configured ones; else, for a lone
    gateway over a local directory, a key it makes in the directory's state folder."""
    from .backends.local import LocalBackend
    from .objects.encryption import Keyring

    settings = cfg.encryption
    auto = None
    old = list(settings.old_key_files)
    why_not = ("SSE-S3 needs a master key: set [encryption] key_file (S3LATENT_SSE_KEY_FILE); "
               "an S3 backend or a cluster never makes one itself")
    if isinstance(backend, LocalBackend):
        made = backend.root / ".s3latent" / "sse-master.key"
        if settings.key_file is None and cfg.cluster is None:
            auto = made
        elif made.exists():
            # The key this directory's gateway made before a key_file (or a cluster) was
            # configured: it still opens the objects it wrapped (never wraps new ones).
            old.append(str(made))
    try:
        keyring = Keyring.from_files(settings.key_file, old,
                                     auto_path=auto, why_not=why_not)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[encryption]: {exc}") from exc
    if not keyring.available:
        logging.getLogger("s3latent").warning("SSE-S3 is unavailable: %s", why_not)
    return keyring


async def _serve(cfg: Config) -> None:
    from aiohttp import web

    from .s3api.connections import ConnectionGuard, install_log_limits
    from .s3api.server import make_app

    gw = build_gateway(cfg)
    app = make_app(gw)
    log = logging.getLogger("s3latent")
    loop = asyncio.get_running_loop()
    install_log_limits(loop)
    # What is left after the grace period (cli._leave) is cut quickly, not after aiohttp's 60 s.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=False,
                           keepalive_timeout=cfg.idle_timeout_s, shutdown_timeout=1.0)
    await runner.setup()
    host, port = cfg.listen_host_port
    max_connections = _connection_cap(cfg.max_connections, log)
    guard = ConnectionGuard(header_timeout=cfg.header_timeout_s,
                            max_connections=max_connections)
    # Our own listening socket (not TCPSite) so every connection passes the guard.
    assert runner.server is not None
    tls = _tls_context(cfg)
    server = await loop.create_server(guard.factory(runner.server), host, port, backlog=1024,
                                      reuse_address=True, ssl=tls)
    log.info("s3latent %s listening on %s://%s:%d, backend %s, %d user(s), "
             "at most %d connections, event loop %s", __version__,
             "https" if tls else "http", host, port, gw.store.name,
             len(cfg.users), max_connections, type(loop).__module__.split(".")[0])
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await _leave(gw, server, log)
    finally:
        server.close()
        await runner.cleanup()


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    """HTTPS on the gateway's own socket (`[server] tls_cert_file` / `tls_key_file`)."""
    if cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[server] tls_cert_file / tls_key_file: {exc}") from exc
    return context


async def _leave(gw: Any, server: asyncio.Server, log: logging.Logger) -> None:
    """Graceful stop: say so, take no new connections, let requests in flight finish.

    /health answers 503 "leaving" (a load balancer stops sending), peers hear it and drop
    this node from the ring, the listening socket closes, responses close their connections,
    and requests in flight get `shutdown_grace_s` to finish before the rest is cut.
    """
    grace = gw.config.shutdown_grace_s
    log.info("shutting down: %d request(s) in flight, up to %.0f s to finish", gw.in_flight,
             grace)
    gw.leaving = True
    started = time.monotonic()
    if gw.cluster is not None:
        try:
            await asyncio.wait_for(gw.cluster.leave(), timeout=max(0.1, min(grace, 2.0)))
        except TimeoutError:
            log.warning("not every peer heard that this node is leaving")
    server.close()  # no new connections; those open finish their requests
    if gw.in_flight:
        try:
            await asyncio.wait_for(gw.drained.wait(),
                                   timeout=max(0.0, grace - (time.monotonic() - started)))
        except TimeoutError:
            pass
    if gw.in_flight:
        log.warning("grace period over: %d request(s) still in flight are cut", gw.in_flight)
    else:
        log.info("requests in flight finished; stopping")


def _connection_cap(configured: int, log: logging.Logger) -> int:
    """The configured cap, lowered to leave file descriptors for the backend and files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    usable = max(16, soft - 256)
    if configured > usable:
        log.warning("max_connections %d lowered to %d: the process may open %d files "
                    "(ulimit -n); 256 stay for the backend and files", configured, usable,
                    soft)
        return usable
    return configured


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:  # the tool parses its own options, --help included
        import importlib

        return int(importlib.import_module(f"s3latent.tools.{argv[0]}").main(argv[1:]))
    parser = argparse.ArgumentParser(prog="s3latent", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the S3 gateway")
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:9000)")
    serve.add_argument("--backend", help="file:///path (default ./s3latent-data) or http(s)://")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--domain", help="domain for virtual-hosted-style bucket addressing")
    serve.add_argument("--region", help="region reported to clients (default us-east-1)")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.add_argument("--event-loop", choices=list(EVENT_LOOPS),
                       help="asyncio (default), uvloop, or auto (uvloop when installed)")
    serve.add_argument("--log-level", default="INFO")

    for name, helptext in TOOLS.items():
        tool = sub.add_parser(name, help=helptext, add_help=False)
        tool.add_argument("rest", nargs=argparse.REMAINDER)
    bench = sub.add_parser("bench", help="benchmarks (each has its own --help)",
                           add_help=False)
    bench.add_argument("which", choices=sorted(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    if args.command == "bench":
        import importlib

        module = importlib.import_module(BENCHMARKS[args.which])
        return int(module.main(args.rest))
    if args.command == "serve":
        try:
            cfg = load_config(args.config, listen=args.listen, backend=args.backend,
                              domain=args.domain, region=args.region,
                              log_format=args.log_format, event_loop=args.event_loop)
        except ConfigError as exc:
            print(f"s3latent: {exc}", file=sys.stderr)
            return 2
        setup_logging(cfg.log_format, args.log_level)
        try:
            with asyncio.Runner(loop_factory=event_loop_factory(cfg.event_loop)) as runner:
                runner.run(_serve(cfg))
        except KeyboardInterrupt:
            pass
        except ValueError as exc:
            print(f"s3latent: {exc}", file=sys.stderr)
            return 2
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
