"""Object lock: the bucket's lock configuration, per-version retention and legal hold.

Enforcement is the backend's (the local backend's version files, the store's own object
lock on S3): the gateway parses, validates and forwards; it never bypasses on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...backends.base import ObjectLock
from ...errors import S3Error
from .. import xml
from ..request import S3Request

if TYPE_CHECKING:
    from ..gateway import Gateway

MODES = ("GOVERNANCE", "COMPLIANCE")


def _xml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/xml")


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise S3Error("InvalidArgument", "The retain until date must be an ISO 8601 date.",
                      ArgumentName="RetainUntilDate", ArgumentValue=text) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def bypass_governance(req: S3Request) -> bool:
    return (req.header("x-amz-bypass-governance-retention") or "").lower() == "true"


def lock_from_headers(req: S3Request) -> ObjectLock | None:
    """The x-amz-object-lock-* headers of a PUT, Copy or CreateMultipartUpload."""
    mode = req.header("x-amz-object-lock-mode")
    until = req.header("x-amz-object-lock-retain-until-date")
    hold = req.header("x-amz-object-lock-legal-hold")
    if mode is None and until is None and hold is None:
        return None
    if (mode is None) != (until is None):
        raise S3Error("InvalidArgument", "x-amz-object-lock-retain-until-date and "
                      "x-amz-object-lock-mode must both be supplied.")
    if mode is not None and mode not in MODES:
        raise S3Error("InvalidArgument", "Unknown wormMode directive.",
                      ArgumentName="x-amz-object-lock-mode", ArgumentValue=mode)
    if hold is not None and hold not in ("ON", "OFF"):
        raise S3Error("InvalidArgument", "Legal Hold must be either of 'ON' or 'OFF'",
                      ArgumentName="x-amz-object-lock-legal-hold", ArgumentValue=hold)
    date = _parse_date(until) if until is not None else None
    if date is not None and date <= datetime.now(UTC):
        raise S3Error("InvalidArgument", "The retain until date must be in the future!")
    return ObjectLock(mode, date, hold == "ON")


def lock_headers(lock: ObjectLock | None) -> dict[str, str]:
    """What GET and HEAD answer about a version's lock."""
    if lock is None:
        return {}
    headers: dict[str, str] = {}
    if lock.mode and lock.retain_until:
        headers["x-amz-object-lock-mode"] = lock.mode
        headers["x-amz-object-lock-retain-until-date"] = xml.iso8601(lock.retain_until)
    headers["x-amz-object-lock-legal-hold"] = "ON" if lock.legal_hold else "OFF"
    return headers


# -- bucket configuration -------------------------------------------------------

async def get_object_lock_configuration(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    config = await gw.store.get_object_lock_configuration(req.bucket)
    if not config:
        raise S3Error("ObjectLockConfigurationNotFoundError", BucketName=req.bucket)
    body: dict[str, Any] = {"ObjectLockEnabled": "Enabled"}
    rule = config.get("rule")
    if rule:
        retention: dict[str, Any] = {"Mode": rule["mode"]}
        if rule.get("days"):
            retention["Days"] = rule["days"]
        if rule.get("years"):
            retention["Years"] = rule["years"]
        body["Rule"] = {"DefaultRetention": retention}
    return _xml(xml.render("ObjectLockConfiguration", body))


async def put_object_lock_configuration(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    doc = xml.parse(await req.read_small_body(), "ObjectLockConfiguration")
    if xml.text(doc.get("ObjectLockEnabled")).strip() != "Enabled":
        raise S3Error("MalformedXML")
    rule: dict[str, Any] | None = None
    raw_rule = doc.get("Rule")
    if raw_rule is not None:
        default = raw_rule.get("DefaultRetention") if isinstance(raw_rule, dict) else None
        if not isinstance(default, dict):
            raise S3Error("MalformedXML")
        mode = xml.text(default.get("Mode")).strip()
        days, years = xml.text(default.get("Days")).strip(), \
            xml.text(default.get("Years")).strip()
        if mode not in MODES:
            raise S3Error("MalformedXML")
        if bool(days) == bool(years):
            raise S3Error("MalformedXML")
        try:
            count = int(days or years)
        except ValueError:
            raise S3Error("MalformedXML") from None
        if count <= 0:
            raise S3Error("InvalidRetentionPeriod", "Default retention period must be a "
                          "positive integer value.")
        rule = {"mode": mode, ("days" if days else "years"): count}
    await gw.store.head_bucket(req.bucket)
    await gw.store.put_object_lock_configuration(req.bucket, {"enabled": True, "rule": rule})
    return web.Response(status=200)


# -- per version ---------------------------------------------------------------

async def _version_lock(gw: Gateway, req: S3Request) -> ObjectLock | None:
    assert req.bucket is not None and req.key is not None
    if not await gw.store.get_object_lock_configuration(req.bucket):
        raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
    info = await gw.store.head_object(req.bucket, req.key,
                                      version_id=req.query.get("versionId"))
    return info.lock


async def get_object_retention(gw: Gateway, req: S3Request) -> web.StreamResponse:
    lock = await _version_lock(gw, req)
    if lock is None or lock.mode is None or lock.retain_until is None:
        raise S3Error("NoSuchObjectLockConfiguration")
    return _xml(xml.render("Retention", {"Mode": lock.mode,
                                         "RetainUntilDate": lock.retain_until}))


async def put_object_retention(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    doc = xml.parse(await req.read_small_body(), "Retention")
    mode = xml.text(doc.get("Mode")).strip() or None
    raw_until = xml.text(doc.get("RetainUntilDate")).strip()
    if mode is not None and mode not in MODES:
        raise S3Error("MalformedXML")
    if (mode is None) != (not raw_until):
        raise S3Error("MalformedXML")
    until = _parse_date(raw_until) if raw_until else None
    if until is not None and until <= datetime.now(UTC):
        raise S3Error("InvalidArgument", "The retain until date must be in the future!")
    await gw.store.head_bucket(req.bucket)
    if not await gw.store.get_object_lock_configuration(req.bucket):
        raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
    await gw.store.put_object_retention(req.bucket, req.key,
                                        version_id=req.query.get("versionId"), mode=mode,
                                        until=until, bypass_governance=bypass_governance(req))
    return web.Response(status=200)


async def get_object_legal_hold(gw: Gateway, req: S3Request) -> web.StreamResponse:
    lock = await _version_lock(gw, req)  # no lock at all: no hold (OFF)
    on = lock is not None and lock.legal_hold
    return _xml(xml.render("LegalHold", {"Status": "ON" if on else "OFF"}))


async def put_object_legal_hold(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    doc = xml.parse(await req.read_small_body(), "LegalHold")
    status = xml.text(doc.get("Status")).strip()
    if status not in ("ON", "OFF"):
        raise S3Error("MalformedXML")
    await gw.store.head_bucket(req.bucket)
    if not await gw.store.get_object_lock_configuration(req.bucket):
        raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
    await gw.store.put_object_legal_hold(req.bucket, req.key,
                                         version_id=req.query.get("versionId"),
                                         on=status == "ON")
    return web.Response(status=200)
