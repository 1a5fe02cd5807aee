"""What `bench trace` and `bench cluster` share: their trace/corpus arguments and defaults, the
backend they replay over, the run-in-a-workdir wrapper of `main`, and the report's common part
(the trace's parameters and the machine).

Both benches replay one generated trace over one corpus through gateway processes; only what
they compare differs. Keeping these here means a new trace argument or report field is added
once and reads the same in both JSON files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .host import cpu_model
from .servers import SeaweedServer


@dataclass(frozen=True)
class TraceDefaults:
    """One bench's defaults for the shared arguments, for `--quick` or a full run."""

    requests: int
    objects: int
    sizes: str  # image sides with the built-in tiny model
    model_sizes: str  # image sides with --model-config
    corpus_items: int


def add_trace_arguments(
    ap: argparse.ArgumentParser, *, quick_help: str, requests_help: str = "GETs to replay"
) -> None:
    """--quick, the backend, the model, the trace (synthetic or CSV) and the corpus."""
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--backend", help="S3 endpoint URL or file:///dir (default: start SeaweedFS)")
    ap.add_argument("--model-config", help="TOML file with a [models.X] table (default: tiny)")
    ap.add_argument("--trace", default="synthetic", help="'synthetic' or a trace CSV file")
    ap.add_argument("--requests", type=int, default=None, help=requests_help)
    ap.add_argument("--objects", type=int, default=None, help="distinct objects (synthetic)")
    ap.add_argument("--zipf", type=float, default=0.9, help="popularity skew (synthetic)")
    ap.add_argument(
        "--half-life",
        type=float,
        default=None,
        help="popularity half-life in requests (synthetic; default 5000)",
    )
    ap.add_argument(
        "--arrival-rate",
        type=float,
        default=None,
        help="new images per request (synthetic; default 0.02)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sizes", default=None, help="image sides, e.g. 64,96,128")
    ap.add_argument("--corpus-items", type=int, default=None, help="distinct images")


def add_output_arguments(ap: argparse.ArgumentParser, *, plot_help: str, workdir_help: str
                         ) -> None:
    """--json, --plot, --workdir."""
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help=plot_help)
    ap.add_argument("--workdir", help=workdir_help)


def apply_trace_defaults(args: argparse.Namespace, quick: TraceDefaults, full: TraceDefaults
                         ) -> None:
    """Fill the shared arguments the command line left unset."""
    d = quick if args.quick else full
    if args.requests is None:
        args.requests = d.requests
    if args.objects is None:
        args.objects = d.objects
    if args.sizes is None:
        args.sizes = d.sizes if args.model_config is None else d.model_sizes
    if args.corpus_items is None:
        args.corpus_items = d.corpus_items


def model_from_file(path: str) -> tuple[str, dict[str, Any]]:
    """The first [models.X] table of a TOML file: (X, its settings)."""
    data = tomllib.loads(Path(path).read_text())
    models = data.get("models", {})
    if not models:
        raise SystemExit(f"{path}: no [models.X] table")
    model_id, table = next(iter(models.items()))
    return str(model_id), dict(table)


def parse_size(text: str) -> int:
    """A byte size as the gateway's config spells it (4MiB, 512k, ...)."""
    from ..config import parse_size as parse

    return parse(text)


@contextmanager
def backend_for(args: argparse.Namespace, workdir: Path
                ) -> Iterator[tuple[str, tuple[str, str] | None, bool]]:
    """(endpoint, keys, started): `--backend` (keys from S3LATENT_BACKEND_ACCESS_KEY /
    _SECRET_KEY, if set), else a SeaweedFS started here and stopped on exit."""
    if args.backend:
        keys: tuple[str, str] | None = None
        if os.environ.get("S3LATENT_BACKEND_ACCESS_KEY"):
            keys = (
                os.environ["S3LATENT_BACKEND_ACCESS_KEY"],
                os.environ.get("S3LATENT_BACKEND_SECRET_KEY", ""),
            )
        yield args.backend, keys, False
        return
    weed = SeaweedServer(workdir / "weed").start()
    try:
        yield weed.endpoint, (weed.access_key, weed.secret_key), True
    finally:
        weed.stop()


def trace_params(
    args: argparse.Namespace,
    *,
    requests: int,
    objects: int,
    model: str,
    sizes: list[int],
    corpus_items: int,
    backend: str,
    started: bool,
) -> dict[str, Any]:
    """The report's `params` both benches share (each adds its own)."""
    return {
        "trace": args.trace,
        "requests": requests,
        "objects": objects,
        "zipf": args.zipf,
        "half_life": args.half_life,
        "arrival_rate": args.arrival_rate,
        "seed": args.seed,
        "codec": args.codec,
        "model": model,
        "sizes": sizes,
        "corpus_items": corpus_items,
        "backend": "seaweedfs (started by the benchmark)" if started else backend,
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and how busy it was when the report was made)."""
    cpu = cpu_model() or platform.processor()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    out: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version()
    }
    try:
        out["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return out


def run_in_workdir(
    args: argparse.Namespace,
    name: str,
    run: Callable[[argparse.Namespace, Path, Callable[[str], None]], Awaitable[dict[str, Any]]],
) -> dict[str, Any] | None:
    """Run `run` in `--workdir` (kept) or a temporary one (removed), logging to stdout.

    None (and a line saying why) when the gateway's client connection failed."""

    def log(msg: str) -> None:
        print(msg, flush=True)

    own = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"s3latent-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(run(args, workdir, log))
    except aiohttp.ClientError as exc:
        print(f"{name} bench: client error: {exc}")
        return None
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
