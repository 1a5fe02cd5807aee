"""`s3latent bench gpu --tiny` on the CPU: every section runs and the reports say what ran.

The real run needs a GPU machine that is lent rarely; this keeps the command working (and its
JSON and markdown complete) in CI, so the first GPU run is not also its first run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from s3latent.bench import gpu_bench
from s3latent.cli import BENCHMARKS


def test_cli_registers_gpu_bench() -> None:
    assert BENCHMARKS["gpu"] == "s3latent.bench.gpu_bench"


@pytest.mark.timeout(240)
def test_tiny_run_on_cpu_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    # a generous budget: on a loaded CI machine nothing may be skipped for time
    assert gpu_bench.main(["--tiny", "--device", "cpu", "--out", str(out),
                           "--budget-s", "600"]) == 0
    elapsed = time.monotonic() - started
    report = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()

    # wall_s is rounded to 0.1 s
    assert report["tiny"] and report["device"] == "cpu" and report["wall_s"] <= elapsed + 0.05
    # decode: every (model, dtype, size, batch) cell is either measured or says why not
    cells = {(r["model"], r["dtype"], r["size"], r["batch"]): r for r in report["decode"]}
    assert set(cells) == {(m, d, 32, b) for m in ("tiny-tae", "tiny-vae")
                          for d in ("fp32", "bf16", "fp16") for b in (1, 4, 8)}
    for row in cells.values():
        assert row["device"] == "cpu"
        assert "skipped" in row or (row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
                                    and row["iters"] >= 2)
    for model in ("tiny-tae", "tiny-vae"):  # fp32 is what the CPU gateway runs: never skipped
        assert all("p50_ms" in cells[(model, "fp32", 32, b)] for b in (1, 4, 8))
    # identity: the CPU decoders decode a batch one latent at a time, so bytes never depend on
    # batching or on the run
    ident = {(r["model"], r["dtype"]): r for r in report["identity"]}
    for model in ("tiny-tae", "tiny-vae"):
        fp32 = ident[(model, "fp32")]
        assert fp32["batch_identical"] == {"4": True, "8": True}
        assert fp32["run_to_run"] is True
    # encode: the three rendition formats of each model's pixels
    assert {(r["model"], r["format"]) for r in report["encode"]} == {
        (m, f) for m in ("tiny-tae", "tiny-vae") for f in ("png", "jpeg", "webp")}
    assert all(r["bytes"] > 0 and r["ms"] >= 0 for r in report["encode"])
    # trace: both configurations replayed through real gateway processes
    trace = report["trace"]
    assert "skipped" not in trace, trace
    assert set(trace["configs"]) == {"imgstore", "adaptive"}
    assert trace["configs"]["adaptive"]["latent_hit_ratio"] > 0
    # conversion: q8 and auto, 1 and 4 in flight, every admission decoded at least once
    conv = {(r["codec"], r["jobs"]): r for r in report["conversion"]}
    assert set(conv) == {("q8", 1), ("q8", 4), ("auto", 1), ("auto", 4)}
    assert all(r["images_per_s"] > 0 and r["decodes_per_admission"] >= 1 and
               r["device"] == "cpu" for r in conv.values())
    # markdown: one table per section, rows marked cpu
    for heading in ("## Decode latency", "## Batch vs single", "## Encode",
                    "## Trace replay", "## Conversion throughput"):
        assert heading in md
    assert "| tiny-vae | 32 | fp32 | 8 | cpu |" in md and "| adaptive |" in md


def test_budget_exhausted_cells_are_skipped_not_run(tmp_path: Path) -> None:
    """A run out of time still finishes and says which cells it left out and why."""
    out = tmp_path / "out"
    assert gpu_bench.main(["--tiny", "--device", "cpu", "--out", str(out), "--budget-s", "0.01",
                           "--skip", "trace,conversion"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["decode"] and all(r.get("skipped") == "time budget" for r in report["decode"])
    assert report["trace"] == {"skipped": "--skip trace"}
    assert "skipped: time budget" in (out / "results.md").read_text()
