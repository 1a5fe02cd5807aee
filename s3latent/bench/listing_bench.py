"""Listing cost: backend calls and latency per ListObjectsV2 page, gateway vs backend.

Fills one bucket with N converted image + sidecar pairs (tiny random TAESD
decoder, so conversions pass admission and cost little) and M plain objects,
then lists it through a freshly started gateway (cold memory cache) and
directly on the backend, for each listing shape:

- ``all-1000`` / ``all-100``: the whole bucket, max-keys 1000 / 100;
- ``prefix-100``: one "directory" (``gen/00/``, 500 pairs), max-keys 100;
- ``prefix-delimiter-100``: the same with delimiter ``/``;
- ``root-delimiter``: the top level with delimiter ``/`` (common prefixes; the
  hidden ``.s3latent/`` is one of them in the backend and is left out).

and for three gateway states: ``cold`` (restarted: only the view index),
``warm`` (same process again: memory cache), and ``no-index`` (index objects
deleted, restarted: what a gateway without the index did, one HEAD per "-1"
entry; it also writes the index back in the background).

Backend calls come from the gateway's ``s3latent_list_backend_calls_total{kind}``;
latency is the client's (boto3), per page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .host import cpu_model
from .servers import GatewayServer, SeaweedServer
from .trace_bench import _decode_random, tiny_model

MODEL_ID = "tiny"
SUFFIX = ".latent.safetensors"
HIDDEN = ".s3latent/"
KINDS = ("list", "index", "head", "index_write")
SHAPES: dict[str, dict[str, Any]] = {
    "all-1000": {"MaxKeys": 1000},
    "all-100": {"MaxKeys": 100},
    "prefix-100": {"Prefix": "gen/00/", "MaxKeys": 100},
    "prefix-delimiter-100": {"Prefix": "gen/00/", "Delimiter": "/", "MaxKeys": 100},
    "root-delimiter": {"Delimiter": "/", "MaxKeys": 1000},
}


def _client(endpoint: str, access: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 2},
                                          max_pool_connections=16))


def _metrics(endpoint: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(endpoint + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _calls(endpoint: str) -> dict[str, float]:
    samples = _metrics(endpoint)
    out = {k: samples.get(f's3latent_list_backend_calls_total{{kind="{k}"}}', 0.0)
           for k in KINDS}
    out["pages"] = samples.get("s3latent_list_pages_total", 0.0)
    return out


def list_pages(s3: Any, bucket: str, shape: dict[str, Any]) -> tuple[list[float], int]:
    """Every page of one listing: (seconds per page, keys + prefixes listed)."""
    seconds, items = [], 0
    token: str | None = None
    while True:
        kwargs = dict(shape, Bucket=bucket)
        if token:
            kwargs["ContinuationToken"] = token
        started = time.perf_counter()
        page = s3.list_objects_v2(**kwargs)
        seconds.append(time.perf_counter() - started)
        items += len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
        if not page.get("IsTruncated"):
            return seconds, items
        token = page["NextContinuationToken"]


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"pages": len(seconds), "mean_ms": round(1000 * statistics.fmean(seconds), 2),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
            "max_ms": round(1000 * ordered[-1], 2)}


class Bench:
    """One backend, one bucket, gateways started and stopped per measurement."""

    def __init__(self, backend: str, workdir: Path, pairs: int, plain: int, size: int,
                 seed: int) -> None:
        self.backend = backend
        self.workdir = workdir
        self.pairs, self.plain, self.size, self.seed = pairs, plain, size, seed
        self.bucket = f"listing-{uuid.uuid4().hex[:8]}"
        self.weed: SeaweedServer | None = None
        self.config = workdir / "gateway.toml"

    # -- servers --------------------------------------------------------------
    def __enter__(self) -> Bench:
        if self.backend == "seaweedfs":
            self.weed = SeaweedServer(self.workdir / "weed").start()
        table = tiny_model(self.workdir)
        self.model = table
        self.config.write_text(
            f'[models.{MODEL_ID}]\nkind = "tae"\narch = "taesd"\ndecoder = "{table["decoder"]}"\n'
            '[buckets."*"]\ncodec = "q8"\n[server]\nsweep_interval_s = 3600.0\n'
            "conversion_workers = 2\n")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.weed is not None:
            self.weed.stop()

    def gateway(self) -> GatewayServer:
        """A fresh gateway (empty memory cache), its start-up sweep finished."""
        if self.weed is not None:
            url, keys = self.weed.endpoint, (self.weed.access_key, self.weed.secret_key)
        else:
            url, keys = f"file://{self.workdir / 'data'}", None
        gw = GatewayServer(url, self.workdir, backend_keys=keys, log_level="WARNING",
                           extra_args=["--config", str(self.config)]).start()
        deadline = time.monotonic() + 120
        while _metrics(gw.endpoint).get("s3latent_sweeps_total", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the start-up sweep did not finish")
            time.sleep(0.1)
        return gw

    def client(self, gw: GatewayServer) -> Any:
        return _client(gw.endpoint, gw.access_key, gw.secret_key)

    def direct(self) -> Any:
        """A client of the backend itself (SeaweedFS only)."""
        assert self.weed is not None
        return _client(self.weed.endpoint, self.weed.access_key, self.weed.secret_key)

    # -- the bucket ---------------------------------------------------------------
    def fill(self) -> dict[str, Any]:
        """Upload the pairs and plain objects through a gateway; wait for every conversion."""
        corpus = _decode_random(MODEL_ID, self.model, min(self.pairs, 64), [self.size],
                                self.seed)
        gw = self.gateway()
        try:
            s3 = self.client(gw)
            s3.create_bucket(Bucket=self.bucket)
            uploads: list[tuple[str, bytes, str]] = []
            for i in range(self.pairs):
                item = corpus[i % len(corpus)]
                key = f"gen/{i // 500:02d}/img-{i:06d}.png"
                uploads += [(key, item.png, "image/png"),
                            (key + SUFFIX, item.sidecar, "application/octet-stream")]
            for j in range(self.plain):
                where = "misc" if j % 2 else f"gen/{(j // 2) % max(1, self.pairs // 500):02d}"
                uploads.append((f"{where}/note-{j:06d}.json", b'{"n": %d}' % j,
                                "application/json"))
            started = time.perf_counter()

            def put(item: tuple[str, bytes, str]) -> None:
                s3.put_object(Bucket=self.bucket, Key=item[0], Body=item[1],
                              ContentType=item[2])

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, uploads))
            uploaded = time.perf_counter() - started
            deadline = time.monotonic() + 3600
            while True:
                done = sum(v for k, v in _metrics(gw.endpoint).items()
                           if k.startswith("s3latent_conversions_total{")
                           and 'result="admitted"' in k)
                indexed = self.count_hidden(".s3latent/v/")
                if done >= self.pairs and indexed >= 2 * self.pairs:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done} of {self.pairs} pairs converted")
                time.sleep(1.0)
            return {"upload_s": round(uploaded, 1),
                    "convert_s": round(time.perf_counter() - started, 1)}
        finally:
            gw.stop()

    def backend_keys(self, prefix: str) -> list[str]:
        """Keys under prefix, listed on the backend itself."""
        if self.weed is not None:
            out: list[str] = []
            for page in self.direct().get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                out += [o["Key"] for o in page.get("Contents", [])]
            return out
        import asyncio

        from ..backends.local import LocalBackend

        async def scan() -> list[str]:
            backend = LocalBackend(self.workdir / "data")
            await backend.start()
            found: list[str] = []
            start = None
            while True:
                page = await backend.list_objects(self.bucket, prefix=prefix, start_after=start)
                found += [e.key for e in page.entries]
                if not page.is_truncated:
                    return found
                start = page.next_start_after

        return asyncio.run(scan())

    def count_hidden(self, prefix: str) -> int:
        return len(self.backend_keys(prefix))

    def drop_index(self) -> int:
        """Delete every view index object (the state before the index existed)."""
        keys = self.backend_keys(".s3latent/v/")
        if self.weed is not None:
            s3 = self.direct()
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        else:
            import asyncio

            from ..backends.local import LocalBackend

            async def drop() -> None:
                backend = LocalBackend(self.workdir / "data")
                await backend.start()
                for key in keys:
                    await backend.delete_object(self.bucket, key)

            asyncio.run(drop())
        return len(keys)

    # -- measurements ---------------------------------------------------------------
    def through_gateway(self, gw: GatewayServer, shape: dict[str, Any]) -> dict[str, Any]:
        """Page by page, with the backend calls each page cost (metrics read between pages,
        outside the timed request)."""
        s3 = self.client(gw)
        first = before = _calls(gw.endpoint)
        seconds: list[float] = []
        per_page: list[int] = []
        items = 0
        token: str | None = None
        while True:
            kwargs = dict(shape, Bucket=self.bucket)
            if token:
                kwargs["ContinuationToken"] = token
            started = time.perf_counter()
            page = s3.list_objects_v2(**kwargs)
            seconds.append(time.perf_counter() - started)
            items += len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
            after = _calls(gw.endpoint)
            per_page.append(int(sum(after[k] - before[k] for k in ("list", "index", "head"))))
            before = after
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        used = {k: before[k] - first[k] for k in before}
        calls = sum(per_page)
        return {**_summary(seconds), "items": items,
                "calls": {k: int(used[k]) for k in KINDS},
                "calls_per_page": round(calls / len(per_page), 2),
                "max_calls_per_page": max(per_page),
                "calls_per_key": round(calls / max(1, items), 4)}

    def on_backend(self, shape: dict[str, Any]) -> dict[str, Any] | None:
        if self.weed is None:
            return None
        seconds, items = list_pages(self.direct(), self.bucket, shape)
        return {**_summary(seconds), "items": items}

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"fill": self.fill()}
        results["backend_objects"] = {
            "total": len(self.backend_keys("")),
            "index": self.count_hidden(".s3latent/v/"),
        }
        shapes: dict[str, Any] = {}
        for name, shape in SHAPES.items():
            row: dict[str, Any] = {"shape": shape, "backend": self.on_backend(shape)}
            gw = self.gateway()
            try:
                row["cold"] = self.through_gateway(gw, shape)
                row["warm"] = self.through_gateway(gw, shape)
            finally:
                gw.stop()
            dropped = self.drop_index()
            gw = self.gateway()
            try:
                row["no-index"] = self.through_gateway(gw, shape)
                row["no-index"]["index_entries_dropped"] = dropped
                self._wait_repaired(gw, dropped, shape)
                row["no-index"]["calls"]["index_write"] = int(_calls(gw.endpoint)["index_write"])
            finally:
                gw.stop()
            # Whatever the listing did not cover is still missing: put the index back whole.
            self._reindex()
            shapes[name] = row
            print(f"{name}: " + json.dumps({k: v for k, v in row.items() if k != "shape"}),
                  flush=True)
        results["shapes"] = shapes
        return results

    def _wait_repaired(self, gw: GatewayServer, dropped: int, shape: dict[str, Any]) -> None:
        """Until the background index writes of a no-index listing are done."""
        deadline = time.monotonic() + 300
        last = -1.0
        while time.monotonic() < deadline:
            now = _calls(gw.endpoint)["index_write"]
            if now == last:
                return
            last = now
            time.sleep(1.0)

    def _reindex(self) -> None:
        """List the whole bucket once through a gateway: it writes missing index entries."""
        gw = self.gateway()
        try:
            list_pages(self.client(gw), self.bucket, {"MaxKeys": 1000})
            deadline = time.monotonic() + 600
            while self.count_hidden(".s3latent/v/") < 2 * self.pairs:
                if time.monotonic() > deadline:
                    raise RuntimeError("the index was not rebuilt")
                time.sleep(0.5)
        finally:
            gw.stop()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = cpu_model()
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "system": platform.platform()}


def table(results: dict[str, Any]) -> str:
    """Markdown: calls and latency per page for every shape and gateway state."""
    lines = ["| listing | where | pages | keys | list | index | HEAD | calls/page (max) | "
             "calls/key | mean ms/page | p50 | max |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in results["shapes"].items():
        backend = row.get("backend")
        if backend:
            lines.append(f"| {name} | backend direct | {backend['pages']} | {backend['items']} "
                         f"| {backend['pages']} | - | - | 1 (1) | - | {backend['mean_ms']} | "
                         f"{backend['p50_ms']} | {backend['max_ms']} |")
        for state in ("cold", "warm", "no-index"):
            r = row[state]
            c = r["calls"]
            lines.append(f"| {name} | gateway {state} | {r['pages']} | {r['items']} | "
                         f"{c['list']} | {c['index']} | {c['head']} | {r['calls_per_page']} "
                         f"({r['max_calls_per_page']}) | "
                         f"{r['calls_per_key']} | {r['mean_ms']} | {r['p50_ms']} | "
                         f"{r['max_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3latent bench listing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("seaweedfs", "local"), default="seaweedfs")
    parser.add_argument("--pairs", type=int, default=2000, help="converted image + sidecar pairs")
    parser.add_argument("--plain", type=int, default=1000, help="plain objects")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="s3latent-listing-"))
    workdir = args.workdir or tmp
    started = time.perf_counter()
    try:
        with Bench(args.backend, workdir, args.pairs, args.plain, args.size, args.seed) as bench:
            results = bench.run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results.update(backend=args.backend, pairs=args.pairs, plain=args.plain, size=args.size,
                   machine=machine(), wall_s=round(time.perf_counter() - started, 1),
                   command="s3latent bench listing " + " ".join(argv or []))
    print(table(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
