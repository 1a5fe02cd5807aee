"""`s3latent bench engines` (docs/engine-study.md): the study's measurements on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3latent.bench import engine_study
from s3latent.bench.corpus import default_model_dir
from s3latent.cli import BENCHMARKS
from s3latent.models.tae import build_random_tae

WEIGHTS = default_model_dir()
needs_weights = pytest.mark.skipif(not (WEIGHTS / "taef2_decoder.pth").is_file(),
                                   reason="TAEF2 weights not found")


def test_cli_registers_engine_study() -> None:
    assert BENCHMARKS["engines"] == "s3latent.bench.engine_study"


def test_study_size_reports_time_and_identities(tmp_path: Path) -> None:
    model = build_random_tae("taef2", seed=5)
    names = ["eager-nchw", "eager-cl", "eager-cl-t1"]
    onnx_path = None
    if engine_study.ort_available():
        names += ["ort"]
        onnx_path = tmp_path / "d.onnx"
        engine_study.export_onnx(model, onnx_path)
    engines = engine_study.build_engines(model, names, onnx_path, default_threads=2)
    assert list(engines) == names
    res = engine_study.study_size(engines, 64, rounds=2, batch_check=True, log=lambda m: None)
    today = res["eager-cl"]
    assert today["ratio_vs_today"] == 1.0 and today["same_bytes_as_today"] is True
    for r in res.values():
        assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["first_call_s"] > 0
        assert r["run_to_run"] is True  # every engine repeats itself within a process
        assert isinstance(r["batch_identical"], bool) and len(r["digest"]) == 16
        assert 0 <= r["bytes_differing_vs_today_pct"] <= 100
    table = engine_study.markdown({"sizes": {"64": res}})
    assert "| 64 | eager-cl | " in table and table.count("\n") == len(names) + 2


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        engine_study.build_engines(build_random_tae("taef2"), ["tensorrt"], None, 2)


@needs_weights
def test_main_writes_json_with_fresh_process_memory(tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    assert engine_study.main(["--sizes", "64", "--engines", "eager-cl,eager-cl-t1",
                              "--rounds", "1", "--memory", "eager-cl",
                              "--weights", str(WEIGHTS), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    r = report["sizes"]["64"]["eager-cl"]
    mem = r["memory"]
    assert mem["peak_rss_mib"] >= mem["baseline_rss_mib"] > 0
    # a fresh process renders the same bytes as this one (what a restarted gateway serves)
    assert mem["digest"] == r["digest"]
