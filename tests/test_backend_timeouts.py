"""A hung backend (SeaweedFS stopped with SIGSTOP): clients get 503 in seconds, not a hang."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.gateway import GatewayProcess
from tests.seaweed import SeaweedFS

READ_TIMEOUT = 1.5
# One attempt per timed-out call (timeouts are not retried) plus slack for a loaded machine.
BOUND = READ_TIMEOUT + 2.5
# A listing may make two backend calls in a row: the bucket check (once its 10 s cache has
# expired, as it can on a loaded machine by the time the listing runs) and the page.
CALLS = {"GET": 1, "HEAD": 1, "PUT": 1, "LIST": 2}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedFS, GatewayProcess]]:
    """Own SeaweedFS: stopping the session's one would stall other modules' tests."""
    work = tmp_path_factory.mktemp("hung")
    config = ("[server]\nbackend_connect_timeout_s = 1.0\n"
              f"backend_read_timeout_s = {READ_TIMEOUT}\n[cache]\nmemory = 0\n")
    with SeaweedFS() as weed:
        gw = GatewayProcess(weed.endpoint, work, config=config,
                            backend_keys=(weed.access_key, weed.secret_key)).start()
        try:
            yield weed, gw
        finally:
            gw.stop()


def _timed(call: object) -> tuple[float, ClientError]:
    started = time.monotonic()
    with pytest.raises(ClientError) as info:
        call()  # type: ignore[operator]
    return time.monotonic() - started, info.value


def test_get_head_put_answer_503_while_backend_hangs(
        stack: tuple[SeaweedFS, GatewayProcess], tmp_path: Path) -> None:
    weed, gw = stack
    s3 = gw.client(connect_timeout=2, read_timeout=30, max_attempts=1)
    s3.create_bucket(Bucket="hung")
    s3.put_object(Bucket="hung", Key="k.bin", Body=b"x" * 1000)
    assert weed.proc is not None
    os.killpg(weed.proc.pid, signal.SIGSTOP)
    try:
        for name, call in (
            ("GET", lambda: s3.get_object(Bucket="hung", Key="k.bin")),
            ("HEAD", lambda: s3.head_object(Bucket="hung", Key="k.bin")),
            ("PUT", lambda: s3.put_object(Bucket="hung", Key="new.bin", Body=b"y" * 1000)),
            ("LIST", lambda: s3.list_objects_v2(Bucket="hung")),
        ):
            elapsed, err = _timed(call)
            assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 503, name
            if name != "HEAD":  # HEAD answers carry no body, hence no code
                assert err.response["Error"]["Code"] == "ServiceUnavailable", name
            assert elapsed < BOUND + (CALLS[name] - 1) * READ_TIMEOUT, (name, elapsed)
    finally:
        os.killpg(weed.proc.pid, signal.SIGCONT)
    # The backend is back: the gateway serves again (nothing stored was lost).
    deadline = time.monotonic() + 20
    while True:
        try:
            body = s3.get_object(Bucket="hung", Key="k.bin")["Body"].read()
            break
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert body == b"x" * 1000


def test_backend_503_without_throttle_code_is_service_unavailable() -> None:
    from s3latent.backends.s3_datapath import translate_status

    assert translate_status(503, "ServiceUnavailable", None, "op", "b", "k").code == \
        "ServiceUnavailable"
    assert translate_status(503, "SlowDown", None, "op", "b", "k").code == "SlowDown"
    assert translate_status(429, "", None, "op", "b", "k").code == "SlowDown"


def test_backend_hanging_mid_body_cuts_the_client_off(
        stack: tuple[SeaweedFS, GatewayProcess]) -> None:
    """The status line is sent: the client must see a short body soon, not a hang."""
    weed, gw = stack
    s3 = gw.client(connect_timeout=2, read_timeout=30, max_attempts=1)
    s3.create_bucket(Bucket="midbody")
    size = 48 * 1024 * 1024  # more than the socket buffers between the three processes
    s3.put_object(Bucket="midbody", Key="big.bin", Body=b"z" * size)
    body = s3.get_object(Bucket="midbody", Key="big.bin")["Body"]
    got = len(body.read(1024 * 1024))
    assert weed.proc is not None
    os.killpg(weed.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as info:  # urllib3/botocore: IncompleteRead or similar
            while chunk := body.read(1024 * 1024):
                got += len(chunk)
        assert "Timeout" not in type(info.value).__name__, info.value
        assert got < size
        assert time.monotonic() - started < BOUND + 2
    finally:
        os.killpg(weed.proc.pid, signal.SIGCONT)
    assert "backend failed after" in gw.log_path.read_text(errors="replace")
