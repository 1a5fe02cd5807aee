"""`s3latent bench storage`: what converting cost, per codec and size (structure, not timings)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3latent.bench import storage_bench
from s3latent.executables import find_executable
from tests.conftest import TAEF2_DIR

METRICS = b"""# HELP s3latent_decode_batch_size Latents per decode batch
# TYPE s3latent_decode_batch_size histogram
s3latent_decode_batch_size_bucket{le="1.0"} 3.0
s3latent_decode_batch_size_count 3.0
s3latent_decode_batch_size_sum 7.0
s3latent_decode_batch_seconds_sum 1.25
s3latent_render_stage_seconds{stage="decode"} 0.5
"""


@pytest.fixture
def metrics_endpoint() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(METRICS)))
            self.end_headers()
            self.wfile.write(METRICS)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_metrics_reads_unlabelled_samples(metrics_endpoint: str) -> None:
    got = storage_bench._metrics(metrics_endpoint)
    assert got["s3latent_decode_batch_size_sum"] == 7.0
    assert got["s3latent_decode_batch_seconds_sum"] == 1.25
    assert not any("{" in k for k in got)


def test_cpu_seconds_counts_this_process() -> None:
    import os

    before = storage_bench._cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert storage_bench._cpu_seconds(os.getpid()) - before >= 0.1


def test_cost_table_per_codec_and_size() -> None:
    cost = {"images": 2, "decodes_per_admission": 1.5, "cpu_s_per_image": 2.0,
            "wall_s_per_image": 1.1, "decode_s_per_image": 0.7, "images_per_s": 0.9}
    table = storage_bench.cost_table({"jobs": 2, "codecs": {
        "auto": {"conversion": {"256": cost, "512": cost}}}})
    lines = table.splitlines()
    assert "images/s (jobs=2)" in lines[0] and len(lines) == 4
    assert lines[2] == "| auto | 256 | 1.5 | 2.0 | 1.1 | 0.7 | 0.9 |"


@pytest.mark.slow
@pytest.mark.taef2
@pytest.mark.seaweedfs
@pytest.mark.skipif(not (TAEF2_DIR / "taef2_decoder.pth").is_file(), reason="no TAEF2 weights")
@pytest.mark.skipif(find_executable("weed") is None, reason="no `weed` binary")
def test_run_reports_conversion_cost(tmp_path: Path) -> None:
    results = storage_bench.run(["auto", "q8"], [256], 2, TAEF2_DIR, tmp_path,
                                log=lambda *_: None, jobs=2)
    assert results["jobs"] == 2
    auto = results["codecs"]["auto"]["conversion"]["256"]
    q8 = results["codecs"]["q8"]["conversion"]["256"]
    assert auto["images"] == 2 and q8["images"] == 2
    assert q8["decodes_per_admission"] == 1.0  # one decode, the policy check
    assert 1.0 <= auto["decodes_per_admission"] <= 4.0
    assert auto["cpu_s_per_image"] > 0 and auto["images_per_s"] > 0
    assert all(r["state"] == "latent" for r in results["codecs"]["auto"]["rows"])
