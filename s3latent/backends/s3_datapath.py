"""A lean SigV4 client for the backend's data path: GET, HEAD, PUT and UploadPart.

aiobotocore costs about 3 ms of CPU per call in hooks, serialisation and
response parsing (measured in docs/bench-gateway.md) — more than the backend
spends serving a 1 MiB GET. The hot path therefore signs its own requests on
a pooled aiohttp session, reusing the signing-key cache of the front end, and
retries idempotent failures with backoff; everything else stays on aiobotocore.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import xmltodict

from ..s3.auth import sign_hex, signing_key
from ..s3.errors import S3Error

log = logging.getLogger(__name__)

UNSIGNED = "UNSIGNED-PAYLOAD"
_RETRY_STATUSES = {500, 502, 503, 504}
READ_CHUNK = 256 * 1024
# The slowest upload to the backend we wait for (bytes/s) before answering 503.
MIN_UPLOAD_RATE = 1024 * 1024


class BackendUnavailable(Exception):
    """The backend could not be reached (after retries)."""


def _encode_path(bucket: str, key: str | None) -> str:
    path = "/" + quote(bucket, safe="")
    if key is not None:
        path += "/" + quote(key, safe="/~")
    return path


class DataPath:
    """Signed requests straight over aiohttp; see the module docstring."""

    def __init__(self, endpoint_url: str, access_key: str, secret_key: str, region: str, *,
                 max_connections: int, connect_timeout: float, read_timeout: float,
                 max_attempts: int) -> None:
        self.endpoint = endpoint_url.rstrip("/")
        self.host = self.endpoint.split("://", 1)[1]
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._max_attempts = max(1, max_attempts)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              auto_decompress=False, skip_auto_headers=(
                                                  "User-Agent", "Accept-Encoding"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sign(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        now = datetime.now(UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        date = amz_date[:8]
        headers["host"] = self.host
        headers["x-amz-date"] = amz_date
        headers.setdefault("x-amz-content-sha256", UNSIGNED)
        names = sorted(headers)
        canonical_headers = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
        signed = ";".join(names)
        canonical = "\n".join([method, path, query, canonical_headers, signed,
                               headers["x-amz-content-sha256"]])
        scope = f"{date}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = sign_hex(signing_key(self._secret_key, date, self._region), to_sign)
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        del headers["host"]  # aiohttp sends Host itself, with the same value

    def _timeout_for(self, body: Any) -> aiohttp.ClientTimeout:
        """sock_read bounds each read (body chunks too), but not a stalled upload.

        A backend that stops reading leaves our writes waiting forever, so a
        request with a body also gets a total bound: the read timeout plus the
        body at MIN_UPLOAD_RATE.
        """
        size = _body_size(body)
        if not size:
            return self._timeout
        return aiohttp.ClientTimeout(
            sock_connect=self._timeout.sock_connect, sock_read=self._timeout.sock_read,
            total=(self._timeout.sock_connect or 0) + (self._timeout.sock_read or 0)
            + size / MIN_UPLOAD_RATE)

    async def request(self, method: str, bucket: str, key: str | None, *,
                      query: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None,
                      body: Any = None) -> aiohttp.ClientResponse:
        """A response with a 2xx status (the caller reads or releases it), or S3Error.

        `body` must be replayable (bytes, or a seekable file rewound per attempt).
        """
        assert self._session is not None, "DataPath.start() was not called"
        path = _encode_path(bucket, key)
        pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                       for k, v in (query or {}).items())
        query_string = "&".join(f"{k}={v}" for k, v in pairs)
        url = self.endpoint + path + (f"?{query_string}" if query_string else "")
        attempt = 0
        while True:
            attempt += 1
            signed = {k.lower(): v for k, v in (headers or {}).items()}
            self._sign(method, path, query_string, signed)
            if hasattr(body, "seek"):
                body.seek(0)
            try:
                resp = await self._session.request(method, url, headers=signed, data=body,
                                                   timeout=self._timeout_for(body),
                                                   skip_auto_headers=("Content-Type",))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # Every data-path call is idempotent (GET, HEAD, PUT, UploadPart), but a
                # timeout is not retried: a hung backend would hang each attempt again.
                if not isinstance(exc, TimeoutError) and attempt < self._max_attempts:
                    await _backoff(attempt)
                    continue
                log.warning("backend %s unreachable: %s %s: %s", self.endpoint, method, path,
                            exc)
                raise S3Error("ServiceUnavailable",
                              "The storage backend is unreachable; retry later.") from exc
            if resp.status < 300 or resp.status == 304:
                return resp
            data = await resp.read() if method != "HEAD" else b""
            resp.release()
            if (resp.status in _RETRY_STATUSES or resp.status == 429) and \
                    attempt < self._max_attempts:
                await _backoff(attempt)
                continue
            raise _error(resp.status, data, bucket, key)


def _body_size(body: Any) -> int:
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    try:
        return os.fstat(body.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return 0


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(min(2.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + random.random()))


def _error(status: int, data: bytes, bucket: str, key: str | None) -> S3Error:
    code, message = "", None
    if data:
        try:
            doc = xmltodict.parse(data, disable_entities=True).get("Error", {})
            code, message = doc.get("Code", "") or "", doc.get("Message")
        except Exception:  # not XML: judge by the status alone
            code = ""
    from .s3 import translate_status  # circular at import time

    return translate_status(status, code, message, "datapath", bucket, key)


def parse_http_date(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


async def iter_body(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        yield chunk
