"""Slow and idle clients: header timeout, idle timeout and the connection cap (real gateway)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import GatewayProcess

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
CAP = 100


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("guarded")
    config = (f"[server]\nheader_timeout_s = {HEADER_TIMEOUT}\n"
              f"idle_timeout_s = {IDLE_TIMEOUT}\nmax_connections = {CAP}\n")
    gw = GatewayProcess(f"file://{work / 'data'}", work, config=config).start()
    try:
        yield gw
    finally:
        gw.stop()


def _connect(gw: GatewayProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the gateway closes (or resets) `s` within `seconds`."""
    s.settimeout(seconds)
    try:
        while True:
            if not s.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _client(gw: GatewayProcess) -> Any:
    return gw.client(connect_timeout=2, read_timeout=3, max_attempts=1)


def test_half_sent_requests_cannot_starve_a_normal_client(guarded: GatewayProcess) -> None:
    """300 connections each holding half a request line, cap 100: boto3 still gets served."""
    socks = []
    try:
        for _ in range(300):
            s = _connect(guarded)
            s.sendall(b"GET /some-bucket/ke")
            socks.append(s)
        started = time.monotonic()
        _client(guarded).list_buckets()
        assert time.monotonic() - started < 2.0
        # The cap closed the oldest ones at once; the header timeout closes the rest.
        deadline = time.monotonic() + HEADER_TIMEOUT + 3
        still_open = [s for s in socks if not _closed_within(s, max(0.01, deadline -
                                                                    time.monotonic()))]
        assert still_open == []
    finally:
        for s in socks:
            s.close()
    lines = guarded.log_path.read_text(errors="replace").count("\n")
    assert lines < 100, guarded.log()[-3000:]


def test_trickled_headers_are_cut_off(guarded: GatewayProcess) -> None:
    """Sending a byte now and then does not extend the header deadline."""
    with _connect(guarded) as s:
        started = time.monotonic()
        closed = False
        for byte in b"GET /bucket/key HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n":
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if _closed_within(s, 0.2):
                closed = True
                break
        assert closed
        assert HEADER_TIMEOUT - 0.2 < time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_keepalive_connection_idles_out_and_half_sent_second_request_times_out(
        guarded: GatewayProcess) -> None:
    with _connect(guarded) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200" in s.recv(4096).split(b"\r\n")[0]
        started = time.monotonic()
        assert _closed_within(s, IDLE_TIMEOUT + 2)
        assert IDLE_TIMEOUT - 0.5 < time.monotonic() - started
    with _connect(guarded) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200" in s.recv(4096).split(b"\r\n")[0]
        s.sendall(b"GET /hea")  # the second request's head never ends
        started = time.monotonic()
        assert _closed_within(s, HEADER_TIMEOUT + 1.5)
        assert time.monotonic() - started < IDLE_TIMEOUT


def test_rate_limit_filter_caps_a_flood() -> None:
    import logging

    from s3latent.s3.connections import RateLimitFilter

    limiter = RateLimitFilter(burst=5, interval=60)
    passed = sum(limiter.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 0,
                                                  "accept failed", None, None))
                 for _ in range(10_000))
    assert passed == 5


def test_config_refuses_zero_timeouts(tmp_path: Path) -> None:
    from s3latent.config import ConfigError, load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nheader_timeout_s = 0\n")
    with pytest.raises(ConfigError, match="header_timeout_s"):
        load_config(cfg, env={})
    cfg.write_text("[server]\nbackend_read_timeout_s = 4\nmax_connections = 10\n")
    loaded = load_config(cfg, env={})
    assert (loaded.backend_read_timeout_s, loaded.max_connections) == (4.0, 10)
