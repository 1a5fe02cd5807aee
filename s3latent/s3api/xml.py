"""S3's XML dialect: rendering responses and parsing request bodies safely."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict

from ..errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# What XML 1.0 cannot carry, even escaped: a key holding one would break every
# listing page without encoding-type=url (names.check_new_key refuses such keys).
XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_XML_BODY = 2 * 1024 * 1024


def render(root: str, body: dict[str, Any], *, namespace: bool = True) -> bytes:
    """Dict -> XML document; lists repeat the element, None values are dropped."""
    content = _clean(body)
    if namespace:
        content = {"@xmlns": S3_NS, **content}
    return xmltodict.unparse({root: content}, encoding="UTF-8").encode()


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso8601(value)
    if isinstance(value, str) and XML_INVALID.search(value):
        # A key stored before the write-time rule (or by another client of the
        # backend): U+FFFD keeps the document well-formed; encoding-type=url
        # gives the exact key.
        return XML_INVALID.sub("\ufffd", value)
    return value


def iso8601(value: datetime) -> str:
    """The millisecond UTC form S3 uses in XML: 2009-10-12T17:50:30.000Z."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse(data: bytes, root: str) -> dict[str, Any]:
    """Parse a request body, requiring `root` as the document element.

    Namespaces are accepted or absent, as clients differ; entities are refused.
    """
    if len(data) > MAX_XML_BODY:
        raise S3Error("MalformedXML", "The XML you provided was too large.")
    try:
        # Text is verbatim: leading/trailing spaces are part of S3 keys and tags.
        doc = xmltodict.parse(data, disable_entities=True, process_namespaces=False,
                              strip_whitespace=False)
    except (ExpatError, ValueError) as exc:
        raise S3Error("MalformedXML") from exc
    if not isinstance(doc, dict) or len(doc) != 1:
        raise S3Error("MalformedXML")
    name, content = next(iter(doc.items()))
    if name.rpartition(":")[2] != root:
        raise S3Error("MalformedXML")
    try:
        return _strip_ns(content) if isinstance(content, dict) else {}
    except RecursionError as exc:  # nesting no S3 document has: a 400, not a 500
        raise S3Error("MalformedXML") from exc


def _strip_ns(value: Any) -> Any:
    if isinstance(value, dict):
        out = {
            k.rpartition(":")[2]: _strip_ns(v) for k, v in value.items() if not k.startswith("@")
        }
        # Whitespace between child elements is not content.
        if len(out) > 1 and isinstance(out.get("#text"), str) and not out["#text"].strip():
            del out["#text"]
        return out
    if isinstance(value, list):
        return [_strip_ns(v) for v in value]
    return value


def as_list(value: Any) -> list[Any]:
    """xmltodict gives a dict for one child element and a list for several."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def text(value: Any) -> str:
    """Element text, whether xmltodict gave a string, None or a dict with #text."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return str(value.get("#text", ""))
    return str(value)
