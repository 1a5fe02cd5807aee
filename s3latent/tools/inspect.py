"""`s3latent inspect s3://bucket/key`: what the backend holds at a key, and why.

Reads the backend directly (same flags as `serve`). For a latent container it
shows the header, read with a ranged GET of the container's start (the payload
is read only with --verify); for a sidecar stub, the container it points to; for
a plain object, whether a sidecar or image waits beside it for conversion.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from ..backends.base import Backend, ObjectInfo, read_body
from ..config import Config, ConfigError
from ..errors import S3Error
from ..latent.container import ContainerError, ContainerHeader, unpack
from ..objects import physical
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


class InspectFailed(Exception):
    """The key cannot be shown (missing, corrupt); the report so far is attached."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _physical(info: ObjectInfo) -> dict[str, Any]:
    return {
        "size": info.size,
        "etag": info.etag,
        "last_modified": info.last_modified.isoformat(),
        "content_type": info.meta.content_type,
    }


async def _head(backend: Backend, bucket: str, key: str) -> ObjectInfo | None:
    try:
        return await backend.head_object(bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise


async def inspect_key(
    backend: Backend, cfg: Config, bucket: str, key: str, *, verify: bool = False
) -> dict[str, Any]:
    """A JSON-able report of the key; raises InspectFailed (or S3Error) when unreadable."""
    info = await backend.head_object(bucket, key)
    rep = physical.representation(info)
    report: dict[str, Any] = {
        "url": f"s3://{bucket}/{key}",
        "bucket": bucket,
        "key": key,
        "representation": rep,
        "physical": _physical(info),
    }
    view = physical.logical_view(info)
    if view is not None:
        report["logical"] = {
            "size": view.size,
            "etag": view.etag,
            "last_modified": view.last_modified.isoformat(),
        }
    if rep == physical.REP_LATENT:
        await _latent(backend, bucket, key, info, report, verify)
    elif rep == physical.REP_STUB:
        await _stub(backend, bucket, info, report)
    else:
        await _plain(backend, cfg, bucket, key, report)
    return report


async def _latent(
    backend: Backend, bucket: str, key: str, info: ObjectInfo, report: dict[str, Any], verify: bool
) -> None:
    try:
        header, span = await read_header(backend, bucket, key, info.size)
    except ContainerError as exc:
        raise InspectFailed(
            f"marked latent, but the container does not read: {exc}", report
        ) from exc
    report["container_version"] = header.version
    report["header_bytes"] = span
    report["header"] = dataclasses.asdict(header)
    view = physical.logical_view(info)
    report["mirror_agrees"] = view is not None and (view.size, view.etag) == (
        header.size,
        header.etag,
    )
    if span + header.payload_size != info.size:
        raise InspectFailed(
            f"container is {info.size} bytes; header ({span}) + payload "
            f"({header.payload_size}) make {span + header.payload_size}",
            report,
        )
    if verify:
        _, body = await backend.get_object(bucket, key)
        raw = await read_body(body)
        try:
            unpack(raw)
        except ContainerError as exc:
            report["verified"] = False
            raise InspectFailed(f"container fails verification: {exc}", report) from exc
        report["verified"] = True


async def _stub(backend: Backend, bucket: str, info: ObjectInfo, report: dict[str, Any]) -> None:
    image_key = info.meta.internal.get(physical.L_IMAGE, "")
    report["image"] = image_key
    image = await _head(backend, bucket, image_key) if image_key else None
    if image is None or physical.representation(image) != physical.REP_LATENT:
        report["image_representation"] = None if image is None else physical.representation(image)
        raise InspectFailed(f"stub points at {image_key!r}, which is no container", report)
    report["image_representation"] = physical.REP_LATENT
    try:
        header, _ = await read_header(backend, bucket, image_key, image.size)
    except ContainerError as exc:
        raise InspectFailed(f"the container at {image_key!r} does not read: {exc}", report) from exc
    side = header.sidecar
    report["container_sidecar"] = (
        None
        if side is None
        else {k: v for k, v in dataclasses.asdict(side).items() if k != "header_b64"}
    )
    report["matches_container"] = physical.stub_holds(info, image_key, header)
    report["image_model"], report["image_codec"] = header.model, header.codec


async def _plain(
    backend: Backend, cfg: Config, bucket: str, key: str, report: dict[str, Any]
) -> None:
    suffix = cfg.bucket(bucket).sidecar_suffix
    if key.endswith(suffix) and len(key) > len(suffix):
        image_key = key[: -len(suffix)]
        image = await _head(backend, bucket, image_key)
        report["role"] = "sidecar"
        report["image"] = image_key
        report["image_representation"] = None if image is None else physical.representation(image)
        report["waiting"] = image is not None and report["image_representation"] == "plain"
    else:
        side_key = key + suffix
        side = await _head(backend, bucket, side_key)
        report["role"] = "image"
        report["sidecar"] = side_key
        report["sidecar_representation"] = None if side is None else physical.representation(side)
        report["waiting"] = side is not None and report["sidecar_representation"] == "plain"


def _params_summary(params: dict[str, Any]) -> str:
    """Scalars shown, long arrays counted: per-channel tables do not fit a line."""
    parts = []
    for name, value in sorted(params.items()):
        if isinstance(value, list | tuple):
            shown = (
                f"[{', '.join(_short(v) for v in value)}]"
                if len(value) <= 4
                else f"[{len(value)} values]"
            )
        elif isinstance(value, dict):
            shown = f"{{{len(value)} keys}}"
        else:
            shown = _short(value)
        parts.append(f"{name}={shown}")
    return ", ".join(parts) or "-"


def _encoder_summary(encoder: dict[str, Any]) -> str:
    """Only the settings of the format in use (the others are defaults, not choices)."""
    fmt = str(encoder.get("format", "")).lower()
    shown = {
        k: v
        for k, v in encoder.items()
        if k != "format" and (not fmt or k.startswith(fmt.replace("jpg", "jpeg") + "_"))
    }
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(shown.items())) or "-"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def render_text(report: dict[str, Any]) -> str:
    """The report as an aligned table."""
    phys = report["physical"]
    rows: list[tuple[str, Any]] = []
    rep = report["representation"]
    physical_line = f"{phys['size']} bytes ({human_bytes(phys['size'])}), ETag {phys['etag']}"
    if rep == physical.REP_LATENT and "header" in report:
        h = ContainerHeader(**{**report["header"], "sidecar": None})
        side = report["header"]["sidecar"]
        rows += [
            ("representation", f"{h.kind} container, version {report['container_version']}"),
            ("physical object", physical_line),
            ("  header / payload", f"{report['header_bytes']} / {h.payload_size} bytes"),
            ("model", h.model),
            ("latent", f"{' x '.join(str(d) for d in h.shape)}, {h.dtype}"),
            ("codec", f"{h.codec} ({_params_summary(h.codec_params)})"),
            ("logical size", f"{h.size} bytes ({human_bytes(h.size)})"),
            ("logical ETag", f'"{h.etag}"'),
            ("Content-Type", h.content_type),
            ("Last-Modified", h.last_modified),
            ("image format", h.image_format),
            ("encoder", _encoder_summary(h.encoder)),
            (
                "fidelity",
                "exact (rendition identical)" if h.psnr is None else f"PSNR {h.psnr:.2f} dB",
            ),
            ("render profile", h.render_profile or "-"),
        ]
        if side is None:
            rows.append(("sidecar", "none (latent-only upload)"))
        else:
            rows += [
                ("sidecar", f'{side["suffix"]}, {side["size"]} bytes, ETag "{side["etag"]}"'),
                ("  tensor", f"{side['dtype']} {side['shape']}"),
                ("  Content-Type", side["content_type"]),
                ("  Last-Modified", side["last_modified"]),
            ]
        if h.user_metadata:
            rows.append(
                ("user metadata", ", ".join(f"{k}={v}" for k, v in sorted(h.user_metadata.items())))
            )
        rows.append(("payload", f"{h.payload_size} bytes, sha256 {h.payload_sha256[:16]}..."))
        stored = phys["size"] / h.size if h.size else 0.0
        rows.append(("stored / logical", f"{100 * stored:.1f}%"))
        if not report.get("mirror_agrees", True):
            rows.append(("WARNING", "backend metadata mirror disagrees with the header"))
        if "verified" in report:
            rows.append(
                (
                    "verified",
                    "payload SHA-256 and header CRC ok" if report["verified"] else "FAILED",
                )
            )
    elif rep == physical.REP_LATENT:
        rows += [
            ("representation", "latent (container UNREADABLE)"),
            ("physical object", physical_line),
        ]
    elif rep == physical.REP_STUB:
        logical = report.get("logical", {})
        rows += [
            ("representation", "sidecar stub (answered from the container)"),
            ("physical object", physical_line),
            ("points at", f"s3://{report['bucket']}/{report['image']}"),
            ("logical size", f"{logical.get('size')} bytes"),
            ("logical ETag", f'"{logical.get("etag")}"'),
            ("Last-Modified", logical.get("last_modified")),
        ]
        if report.get("image_representation") == physical.REP_LATENT:
            rows += [
                ("container", f"model {report['image_model']}, codec {report['image_codec']}"),
                ("matches container", "yes" if report["matches_container"] else "NO"),
            ]
        else:
            rows.append(("container", "MISSING"))
    else:
        rows += [
            ("representation", "plain (stored as uploaded)"),
            ("physical object", physical_line),
            ("Content-Type", phys["content_type"]),
            ("Last-Modified", phys["last_modified"]),
        ]
        if report["role"] == "sidecar":
            state = report["image_representation"] or "missing"
            rows.append(("sidecar of", f"{report['image']} ({state})"))
            if report["waiting"]:
                rows.append(("conversion", "pending (or refused): image and sidecar both plain"))
        else:
            state = report["sidecar_representation"] or "none"
            rows.append(("sidecar", f"{report['sidecar']} ({state})"))
            rows.append(
                (
                    "conversion",
                    "pending (or refused): a plain sidecar is beside it"
                    if report["waiting"]
                    else "none (no sidecar)"
                    if state == "none"
                    else "-",
                )
            )
    return format_table(rows, report["url"])


async def _inspect(cfg: Config, bucket: str, key: str, verify: bool) -> dict[str, Any]:
    backend = make_backend(cfg)
    await backend.start()
    try:
        return await inspect_key(backend, cfg, bucket, key, verify=verify)
    finally:
        await backend.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3latent inspect",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 shown, 1 missing or unreadable, 2 bad arguments.",
    )
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inspect`; cli.py can hand its subparser to this."""
    parser.add_argument("url", metavar="s3://BUCKET/KEY", help="the object to look at")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--verify", action="store_true", help="read the whole container and check its checksums"
    )
    add_common_args(parser)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `inspect` command; returns the exit status."""
    try:
        bucket, key = parse_s3_url(args.url, need_key=True)
        cfg = tool_config(args)
    except (UsageError, ConfigError) as exc:
        print(f"s3latent inspect: {exc}", file=sys.stderr)
        return 2
    setup_tool_logging(args.log_level)
    status, error = 0, None
    try:
        report = asyncio.run(_inspect(cfg, bucket, key, args.verify))
    except InspectFailed as exc:
        report, status, error = exc.report, 1, str(exc)
    except (S3Error, ValueError, OSError) as exc:
        print(f"s3latent inspect: s3://{bucket}/{key}: {exc}", file=sys.stderr)
        return 1
    if error:
        report["error"] = error
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    if error:
        print(f"s3latent inspect: {error}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """`s3latent inspect ...`; returns the exit status."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
