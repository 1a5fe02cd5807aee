"""Client connection guard: header timeout, connection cap, rate-limited error logs.

aiohttp has an idle (keep-alive) timeout but nothing that bounds how long a
client may take to send a request's headers, and no connection limit: one
client holding thousands of half-sent requests used up the gateway's file
descriptors. `ConnectionGuard` wraps each aiohttp protocol in a thin proxy that

- closes a connection whose request headers are not complete within
  `header_timeout` of its first byte (or of the accept, for a new connection);
- above `max_connections`, closes the oldest idle connections first (idle: no
  request being handled, headers possibly half-sent), else refuses the new one;

and `RateLimitFilter` keeps error floods (accept failures, aborted requests)
from filling the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("s3latent.connections")

_END_OF_HEADERS = b"\r\n\r\n"


class _Guarded(asyncio.Protocol):
    """Forwards every protocol event to aiohttp's handler, watching request heads."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.in_head = True  # waiting for (the rest of) a request's headers
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None

    # -- state ----------------------------------------------------------------
    def idle(self) -> bool:
        """No request in hand: aiohttp's handler waits for the next message.

        aiohttp's own keep-alive check reads the same private `_waiter`; should a
        release drop it, this answers False: the cap then refuses newcomers
        instead of evicting, and later heads are bounded by the idle timeout
        (tests/test_connections.py notices either).
        """
        waiter = getattr(self.inner, "_waiter", None)
        return waiter is not None and not waiter.done()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.in_head and self.transport is not None:
            self._guard.closed_slow += 1
            self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inner.connection_made(transport)
        self._arm()
        self._guard.added(self)

    def data_received(self, data: bytes) -> None:
        self._guard.touched(self)
        if not self.in_head and self.idle():
            # The previous request is answered: this byte starts the next head.
            self.in_head, self._tail = True, b""
            self._arm()
        if self.in_head:
            window = self._tail + data
            if _END_OF_HEADERS in window:
                self.in_head = False
                self._disarm()
            else:
                self._tail = window[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard.removed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """Protocol factory wrapper: `loop.create_server(guard.factory(runner.server), ...)`."""

    def __init__(self, *, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        # Least recently active first: eviction takes the oldest idle connection.
        self._conns: OrderedDict[_Guarded, None] = OrderedDict()
        self.closed_slow = 0
        self.evicted = 0
        self.refused = 0

    def factory(self, make_handler: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory giving guarded versions of `make_handler()`'s protocols."""
        return lambda: _Guarded(self, make_handler())

    @property
    def count(self) -> int:
        return len(self._conns)

    def added(self, conn: _Guarded) -> None:
        self._conns[conn] = None
        if len(self._conns) <= self.max_connections:
            return
        for other in self._conns:  # oldest activity first
            if other is not conn and other.idle():
                self.evicted += 1
                self._conns.pop(other)
                other.abort()
                return
        self.refused += 1  # every other connection is busy: the newcomer goes
        self._conns.pop(conn)
        conn.abort()

    def touched(self, conn: _Guarded) -> None:
        if conn in self._conns:
            self._conns.move_to_end(conn)

    def removed(self, conn: _Guarded) -> None:
        self._conns.pop(conn, None)


class RateLimitFilter(logging.Filter):
    """At most `burst` records per logger per `interval` seconds; then one summary."""

    def __init__(self, burst: int = 20, interval: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._window: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        start, count = self._window.get(record.name, (now, 0))
        if now - start >= self.interval:
            if count > self.burst:
                record.msg = f"[{count - self.burst} similar message(s) suppressed] {record.msg}"
            start, count = now, 0
        count += 1
        self._window[record.name] = (start, count)
        return count <= self.burst


def install_log_limits(loop: asyncio.AbstractEventLoop, *, burst: int = 20,
                       interval: float = 10.0) -> RateLimitFilter:
    """Rate-limit the loggers a connection flood writes to, and the loop's error handler.

    asyncio reports accept() failures (EMFILE) and transport errors through the
    loop's exception handler; aiohttp logs broken requests on 'aiohttp.server'.
    """
    limiter = RateLimitFilter(burst, interval)
    for name in ("asyncio", "aiohttp.server", "aiohttp.access", "s3latent.connections"):
        logging.getLogger(name).addFilter(limiter)
    default = loop.default_exception_handler

    def handler(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        record = logging.LogRecord("asyncio-loop", logging.ERROR, __file__, 0,
                                   context.get("message", "loop error"), None, None)
        if limiter.filter(record):
            default(context)

    loop.set_exception_handler(handler)
    return limiter
