"""Operator tools that work on the backend directly: `convert` and `inspect`.

They read the same configuration as `s3latent serve` (``--config`` TOML, ``--backend``,
``S3LATENT_BACKEND_ACCESS_KEY`` / ``S3LATENT_BACKEND_SECRET_KEY``) and talk to the backend
the gateway stores into, not to a running gateway: bulk conversion then needs no server
and goes through the very admission code the gateway uses.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..backends.base import Backend, read_body
from ..config import Config, load_config
from ..latent.container import (
    PREFIX_SIZE,
    ContainerHeader,
    CorruptContainer,
    IncompleteHeader,
    header_span,
    peek_header,
)

# One ranged read of this many bytes nearly always holds a whole container header.
HEADER_PROBE = 4096


class UsageError(ValueError):
    """A command-line argument cannot be used; the message says why."""


def parse_s3_url(url: str, *, need_key: bool) -> tuple[str, str]:
    """`s3://bucket/key-or-prefix` -> (bucket, rest); the scheme is what users paste."""
    if not url.startswith("s3://"):
        raise UsageError(f"expected s3://bucket/{'key' if need_key else 'prefix'}, got {url!r}")
    bucket, _, rest = url[len("s3://") :].partition("/")
    if not bucket:
        raise UsageError(f"no bucket in {url!r}")
    if need_key and not rest:
        raise UsageError(f"no key in {url!r} (expected s3://bucket/key)")
    return bucket, rest


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags `serve` uses to reach the backend, so one config serves every command."""
    parser.add_argument("--backend", help="file:///path (default ./s3latent-data) or http(s)://")
    parser.add_argument("--config", help="TOML config file (models, buckets), as for serve")
    parser.add_argument(
        "--log-level",
        default="ERROR",
        help="log level for library messages on stderr (default ERROR)",
    )


def tool_config(args: argparse.Namespace) -> Config:
    """Config from the flags; raises ConfigError. The tools need no read cache."""
    cfg = load_config(args.config, backend=args.backend)
    cfg.cache.memory = 0
    return cfg


def setup_tool_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("botocore").setLevel(max(logging.WARNING, root.level))


def make_backend(cfg: Config) -> Backend:
    """The backend the gateway would use for this config (not started)."""
    from ..cli import build_backend

    return build_backend(cfg)


async def read_header(
    backend: Backend, bucket: str, key: str, size: int
) -> tuple[ContainerHeader, int]:
    """(header, header span) of the container at key, from ranged reads of its start only.

    Raises ContainerError (CorruptContainer / UnsupportedContainer) when it is not one.
    """
    want = min(size, HEADER_PROBE)
    data = await _read_range(backend, bucket, key, 0, want) if want else b""
    try:
        span = header_span(data)
    except IncompleteHeader:
        raise CorruptContainer(
            f"object is {size} bytes, shorter than a container prefix ({PREFIX_SIZE})"
        ) from None
    if span > len(data):
        if span > size:
            raise CorruptContainer(f"header says {span} bytes, object is {size}")
        data += await _read_range(backend, bucket, key, len(data), span)
    return peek_header(data), span


async def _read_range(backend: Backend, bucket: str, key: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object."""
    _, body = await backend.get_object(bucket, key, (start, end - 1))
    return await read_body(body)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


def format_table(rows: list[tuple[str, Any]], title: str | None = None) -> str:
    """Two aligned columns; a label's leading spaces indent it under the row above."""
    width = max((len(label) for label, _ in rows), default=0)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)
