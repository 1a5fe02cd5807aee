"""`s3latent bench determinism` on the CPU: batched renditions equal single ones."""

from __future__ import annotations

import json
from pathlib import Path

from s3latent.bench import determinism


def test_cpu_pipeline_batches_equal_singles(tmp_path: Path) -> None:
    out = tmp_path / "det.json"
    assert determinism.main(["--device", "cpu", "--size", "64", "--max-batch", "3",
                             "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["device"] == "cpu" and row["single_repeatable"]
    assert row["pipeline_batched_equals_single"] is True
    assert set(row["raw_batches_differing"]) == {"2", "3"}
