"""`s3latent bench profile`: the CPU-time sampler and the attribution of its stacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from s3latent.bench.gateway_profile import attribute, classify

_LOOP = "BaseEventLoop._run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80)"


def test_classify_by_the_nearest_owning_frame() -> None:
    handler = _LOOP + ";make_app.<locals>._handle (s3latent/s3api/server.py:304)"
    assert classify((handler + ";authenticate (s3latent/s3api/auth.py:500);"
                     "sign_hex (s3latent/sigv4.py:29)").split(";")) \
        == "SigV4 verification (auth.py)"
    backend_send = (handler + ";DataPath.request (s3latent/backends/s3_datapath.py:134);"
                    "ClientRequest.send (aiohttp/client_reqrep.py:1643);"
                    "StreamWriter._write (aiohttp/http_writer.py:100);"
                    "_SelectorSocketTransport.write (asyncio/selector_events.py:1070)")
    assert classify(backend_send.split(";")) == \
        "socket send() to the backend (kernel, loopback TCP)"
    client_send = (handler + ";StreamResponse.write_eof (aiohttp/web_response.py:500);"
                   "StreamWriter._write (aiohttp/http_writer.py:100);"
                   "_SelectorSocketTransport.write (asyncio/selector_events.py:1070)")
    assert classify(client_send.split(";")) == \
        "socket send() to the client (kernel, loopback TCP)"
    assert classify((_LOOP + ";BaseEventLoop.call_soon (asyncio/base_events.py:751)")
                    .split(";")).startswith("event loop")


def test_sampler_counts_cpu_stacks_and_attribute_skips_startup(tmp_path: Path) -> None:
    out = tmp_path / "stacks"
    subprocess.run([sys.executable, "-m", "s3latent.bench.gateway_profile", "--sample",
                    str(out), "--", "-m", "timeit", "-n", "300000", "sum(range(50))"],
                   check=True, capture_output=True, timeout=120)
    lines = out.read_text().splitlines()
    assert lines and sum(int(line.rpartition(" ")[2]) for line in lines) >= 5
    assert any("timeit" in line for line in lines)
    # Nothing in it ran on an event loop: all of it reads as startup, none is attributed.
    assert attribute(out) == ({}, 0)
