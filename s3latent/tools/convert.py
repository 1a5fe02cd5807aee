"""`s3latent convert s3://bucket/prefix`: convert existing image + sidecar pairs in bulk.

For data that was in the backend before the gateway, or uploaded with background
conversion off (`convert = false`). It lists the prefix in the backend, finds each
image K whose sidecar K + the bucket's `sidecar_suffix` sits beside it, and runs the
gateway's own converter on the pairs not yet latent, a few at a time: the same
admission policy, codec fallback, guarded container write and sidecar stub as in
the background. Running it again is harmless; converted pairs count as already latent.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, ListEntry, ObjectInfo
from ..config import Config, ConfigError
from ..errors import S3Error
from ..latent.container import ContainerError
from ..objects import physical
from ..objects.conversion import reason_category
from . import (
    UsageError,
    add_common_args,
    format_table,
    human_bytes,
    make_backend,
    parse_s3_url,
    read_header,
    setup_tool_logging,
    tool_config,
)

# Listing keys remembered to pair a sidecar with its image without a HEAD.
PAIR_WINDOW = 10_000
LIST_PAGE = 1000
DETAIL_LINES = 10  # refused / failed keys printed under the table (all are in --json)

# Results of one pair.
ADMITTED, ALREADY, REFUSED, ERROR, SKIPPED, WOULD = (
    "admitted",
    "already_latent",
    "refused",
    "error",
    "skipped",
    "would_convert",
)


@dataclass
class Pair:
    """An image key and its sidecar key as the listing showed them (physical values)."""

    image: str
    sidecar: str
    image_size: int
    image_etag: str
    sidecar_size: int
    sidecar_etag: str


@dataclass
class PairResult:
    image: str
    sidecar: str
    result: str  # admitted | already_latent | refused | error | skipped | would_convert
    detail: str = ""  # the converter's outcome, or the error
    codec: str | None = None
    psnr: float | None = None
    reason: str | None = None  # refusal / skip category
    bytes_before: int = 0  # image + sidecar, physical, before
    bytes_after: int = 0  # container + stub, physical, after
    seconds: float = 0.0


@dataclass
class Summary:
    """The numbers of the table; bytes count the pairs admitted in this run."""

    source: str
    dry_run: bool = False
    pairs_found: int = 0
    admitted: Counter[str] = field(default_factory=Counter)  # per codec
    already_latent: int = 0
    stubs_completed: int = 0
    would_convert: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # per reason
    skipped: Counter[str] = field(default_factory=Counter)  # per reason
    errors: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    psnr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reduction(self) -> float | None:
        """Percent of the admitted pairs' bytes saved."""
        if not self.bytes_before:
            return None
        return 100.0 * (1 - self.bytes_after / self.bytes_before)

    def add(self, r: PairResult) -> None:
        if r.result == ADMITTED:
            self.admitted[r.codec or "?"] += 1
            self.bytes_before += r.bytes_before
            self.bytes_after += r.bytes_after
            if r.psnr is not None:
                self.psnr.append(r.psnr)
        elif r.result == ALREADY:
            self.already_latent += 1
            if r.detail == "sidecar stubbed":
                self.stubs_completed += 1
        elif r.result == REFUSED:
            self.refused[r.reason or "?"] += 1
        elif r.result == SKIPPED:
            self.skipped[r.reason or "?"] += 1
        elif r.result == WOULD:
            self.would_convert += 1
        else:
            self.errors += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "pairs_found": self.pairs_found,
            "admitted": sum(self.admitted.values()),
            "admitted_by_codec": dict(sorted(self.admitted.items())),
            "already_latent": self.already_latent,
            "stubs_completed": self.stubs_completed,
            "would_convert": self.would_convert,
            "refused": sum(self.refused.values()),
            "refused_by_reason": dict(sorted(self.refused.items())),
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "errors": self.errors,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "reduction_percent": None if self.reduction is None else round(self.reduction, 2),
            "psnr_min": round(min(self.psnr), 2) if self.psnr else None,
            "psnr_mean": round(sum(self.psnr) / len(self.psnr), 2) if self.psnr else None,
            "seconds": round(self.seconds, 3),
        }

    def table(self) -> str:
        rows: list[tuple[str, Any]] = [("pairs found", self.pairs_found)]
        if self.dry_run:
            rows.append(("  would convert", self.would_convert))
        else:
            rows.append(("  admitted", sum(self.admitted.values())))
            rows += [(f"    {codec}", n) for codec, n in sorted(self.admitted.items())]
        already = f"{self.already_latent}"
        if self.stubs_completed:
            already += f" ({self.stubs_completed} sidecar stub(s) completed)"
        rows.append(("  already latent", already))
        if not self.dry_run:
            rows.append(("  refused", sum(self.refused.values())))
            rows += [(f"    {why}", n) for why, n in sorted(self.refused.items())]
        if self.skipped:
            rows.append(("  skipped", sum(self.skipped.values())))
            rows += [(f"    {why}", n) for why, n in sorted(self.skipped.items())]
        rows.append(("  errors", self.errors))
        if not self.dry_run:
            rows += [
                ("bytes before (image + sidecar)", _bytes(self.bytes_before)),
                ("bytes after (container + stub)", _bytes(self.bytes_after)),
                ("reduction", "-" if self.reduction is None else f"{self.reduction:.1f}%"),
            ]
            if self.psnr:
                rows.append(
                    (
                        "PSNR min / mean",
                        f"{min(self.psnr):.2f} / {sum(self.psnr) / len(self.psnr):.2f} dB",
                    )
                )
        rows.append(("time", f"{self.seconds:.1f} s"))
        title = f"s3latent convert {self.source}" + (" (dry run)" if self.dry_run else "")
        return format_table(rows, title)


def _bytes(n: int) -> str:
    return f"{n} ({human_bytes(n)})"


async def find_pairs(
    backend: Backend, bucket: str, prefix: str, suffix: str
) -> AsyncIterator[Pair]:
    """Pairs whose image key is under the prefix, in listing order.

    A sidecar K+suffix always lists after K; keys of a recent window pair without a
    request, an image listed long before its sidecar is confirmed with a HEAD.
    """
    window: OrderedDict[str, ListEntry] = OrderedDict()
    start: str | None = None
    while True:
        page = await backend.list_objects(
            bucket, prefix=prefix, start_after=start, max_keys=LIST_PAGE
        )
        for entry in page.entries:
            if entry.key.endswith(suffix) and len(entry.key) > len(suffix):
                image_key = entry.key[: -len(suffix)]
                image = window.get(image_key)
                if image is None and image_key.startswith(prefix):
                    image = await _listed(backend, bucket, image_key)
                if image is not None:
                    yield Pair(image_key, entry.key, image.size, image.etag, entry.size, entry.etag)
            window[entry.key] = entry
            if len(window) > PAIR_WINDOW:
                window.popitem(last=False)
        if not page.is_truncated or page.next_start_after is None:
            return
        start = page.next_start_after


async def _listed(backend: Backend, bucket: str, key: str) -> ListEntry | None:
    info = await _head(backend, bucket, key)
    return None if info is None else ListEntry(key, info.size, info.etag, info.last_modified)


async def _head(backend: Backend, bucket: str, key: str) -> ObjectInfo | None:
    try:
        return await backend.head_object(bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise


async def _representations(backend: Backend, bucket: str, pair: Pair) -> tuple[str, str] | None:
    """(image rep, sidecar rep); only "-1" ETags can be latent, so only those cost a HEAD."""
    reps = []
    for key, etag in ((pair.image, pair.image_etag), (pair.sidecar, pair.sidecar_etag)):
        if not physical.may_be_latent(etag):
            reps.append("plain")
            continue
        info = await _head(backend, bucket, key)
        if info is None:
            return None
        reps.append(physical.representation(info))
    return reps[0], reps[1]


async def process_pair(
    backend: Backend, converter: Any, bucket: str, pair: Pair, *, dry_run: bool
) -> PairResult:
    """Convert one pair (or say what would happen); never raises but for cancellation."""
    started = time.perf_counter()
    result = PairResult(
        pair.image, pair.sidecar, ERROR, bytes_before=pair.image_size + pair.sidecar_size
    )
    try:
        reps = await _representations(backend, bucket, pair)
        if reps is None:
            result.result, result.reason = SKIPPED, "deleted meanwhile"
        elif reps == (physical.REP_LATENT, physical.REP_STUB):
            result.result, result.detail = ALREADY, "already latent"
        elif reps[1] == physical.REP_STUB:
            result.result, result.reason = SKIPPED, "sidecar key holds another image's stub"
        elif dry_run:
            if reps[0] == physical.REP_LATENT:
                result.result, result.detail = ALREADY, "sidecar stub to complete"
            else:
                result.result = WOULD
        else:
            outcome = await converter.convert(bucket, pair.image)
            result.detail = outcome
            await _classify(backend, bucket, pair, outcome, result)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        result.result, result.detail = ERROR, f"{type(exc).__name__}: {exc}"
    result.seconds = round(time.perf_counter() - started, 3)
    return result


async def _classify(
    backend: Backend, bucket: str, pair: Pair, outcome: str, result: PairResult
) -> None:
    """Turn the converter's outcome line into a result; admitted ones are measured."""
    if outcome.startswith("admitted"):
        image = await backend.head_object(bucket, pair.image)
        side = await _head(backend, bucket, pair.sidecar)
        try:
            header, _ = await read_header(backend, bucket, pair.image, image.size)
        except ContainerError as exc:
            raise RuntimeError(f"converted, but the container does not read back: {exc}") from exc
        result.result, result.codec = ADMITTED, header.codec
        result.psnr = None if header.psnr is None else round(header.psnr, 3)
        result.bytes_after = image.size + (side.size if side is not None else 0)
        return
    if outcome.startswith(("refused: ", "refused earlier: ")):
        reason = outcome.split(": ", 1)[1]
        result.result, result.reason = REFUSED, reason_category(reason)
        return
    if outcome == "already latent" or outcome.startswith("sidecar "):
        result.result = ALREADY  # the latter: a stub left unwritten by a crash, now written
        return
    result.result = SKIPPED
    result.reason = {
        "no sidecar": "deleted meanwhile",
        "image gone": "deleted meanwhile",
        "superseded by a newer write": "overwritten meanwhile",
    }.get(outcome, outcome)


async def convert_prefix(
    cfg: Config,
    bucket: str,
    prefix: str,
    *,
    jobs: int = 2,
    dry_run: bool = False,
    progress: bool = False,
    backend: Backend | None = None,
) -> tuple[Summary, list[PairResult]]:
    """Convert (or with dry_run only list) every pair under the prefix."""
    started = time.perf_counter()
    summary = Summary(f"s3://{bucket}/{prefix}", dry_run=dry_run)
    gateway = None
    if backend is None and not dry_run:
        from ..cli import build_gateway

        gateway = build_gateway(cfg, background=False)
        backend = gateway.store.backend
    elif backend is None:
        backend = make_backend(cfg)
    await backend.start()
    try:
        converter = gateway.store.converter if gateway is not None else None
        await backend.head_bucket(bucket)
        suffix = cfg.bucket(bucket).sidecar_suffix
        bar = _progress(progress)
        pairs = []
        async for pair in find_pairs(backend, bucket, prefix, suffix):
            pairs.append(pair)
            bar.set_description(f"listing ({len(pairs)} pairs)", refresh=len(pairs) % 100 == 0)
        summary.pairs_found = len(pairs)
        bar.reset(total=len(pairs))
        bar.set_description("converting" if not dry_run else "checking")
        results: list[PairResult | None] = [None] * len(pairs)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(pairs)):
            queue.put_nowait(i)

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                r = await process_pair(backend, converter, bucket, pairs[i], dry_run=dry_run)
                results[i] = r
                summary.add(r)
                bar.update(1)
                bar.set_postfix(
                    admitted=sum(summary.admitted.values()),
                    refused=sum(summary.refused.values()),
                    errors=summary.errors,
                    refresh=False,
                )

        await asyncio.gather(*(worker() for _ in range(max(1, jobs))))
        bar.close()
    finally:
        if gateway is not None:
            await gateway.store.close()  # the decode services, then the backend
        else:
            await backend.close()
    summary.seconds = time.perf_counter() - started
    return summary, [r for r in results if r is not None]


def _progress(enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=None,
        desc="listing",
        file=sys.stderr,
        disable=not enabled,
        unit="pair",
        dynamic_ncols=True,
        leave=False,
    )


def _details(results: list[PairResult], dry_run: bool) -> str:
    lines = []
    if dry_run:
        todo = [r for r in results if r.result == WOULD or r.detail == "sidecar stub to complete"]
        for r in todo:
            what = "would convert" if r.result == WOULD else "would stub  "
            lines.append(f"{what}  {r.image}  ({human_bytes(r.bytes_before)} with sidecar)")
        return "\n".join(lines)
    for kind, label in ((REFUSED, "refused"), (ERROR, "error"), (SKIPPED, "skipped")):
        bad = [r for r in results if r.result == kind]
        for r in bad[:DETAIL_LINES]:
            text = r.reason if kind == SKIPPED else r.detail
            if kind == REFUSED:
                text = text.split(": ", 1)[-1]  # "refused: why" -> "why"
            lines.append(f"{label:<8} {r.image}: {text}")
        if len(bad) > DETAIL_LINES:
            lines.append(f"{label:<8} ... and {len(bad) - DETAIL_LINES} more (see --json)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3latent convert",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 done (refusals included), 1 some pairs failed with an "
        "error, 2 bad arguments or configuration.",
    )
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of `convert`; cli.py can hand its subparser to this."""
    parser.add_argument("url", metavar="s3://BUCKET[/PREFIX]", help="what to convert")
    parser.add_argument(
        "--jobs", "-j", type=int, default=2, help="pairs converted at once (default 2)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be converted, change nothing"
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the summary and every pair's result as JSON ('-': stdout)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument(
        "--force",
        action="store_true",
        help="convert even where the bucket's config says convert = false",
    )
    add_common_args(parser)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `convert` command; returns the exit status."""
    try:
        bucket, prefix = parse_s3_url(args.url, need_key=False)
        if args.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        cfg = tool_config(args)
    except (UsageError, ConfigError) as exc:
        print(f"s3latent convert: {exc}", file=sys.stderr)
        return 2
    setup_tool_logging(args.log_level)
    settings = cfg.bucket(bucket)
    if not settings.convert:
        if not (args.force or args.dry_run):
            print(
                f"s3latent convert: conversion is off for bucket {bucket!r} (convert = false "
                "in the config); pass --force to convert it anyway",
                file=sys.stderr,
            )
            return 2
        cfg.buckets[bucket] = dataclasses.replace(settings, convert=True)
    progress = not args.quiet and sys.stderr.isatty()
    try:
        summary, results = asyncio.run(
            convert_prefix(
                cfg, bucket, prefix, jobs=args.jobs, dry_run=args.dry_run, progress=progress
            )
        )
    except KeyboardInterrupt:
        print(
            "s3latent convert: interrupted; pairs done so far stay converted, run again to go on",
            file=sys.stderr,
        )
        return 130
    except (S3Error, ValueError, OSError) as exc:
        print(f"s3latent convert: {exc}", file=sys.stderr)
        return 1
    report = {"summary": summary.to_dict(), "pairs": [dataclasses.asdict(r) for r in results]}
    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout
    details = _details(results, args.dry_run)
    if details:
        print(details, file=out)
        print(file=out)
    print(summary.table(), file=out)
    if args.json:
        text = json.dumps(report, indent=2)
        if to_stdout:
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 1 if summary.errors else 0


def main(argv: list[str] | None = None) -> int:
    """`s3latent convert ...`; returns the exit status."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
