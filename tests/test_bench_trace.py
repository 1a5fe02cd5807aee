"""`s3latent bench trace`: a tiny end-to-end run and the pure helpers around it."""

from __future__ import annotations

import json
from pathlib import Path

from s3latent.bench import trace_bench as tb


def test_map_keys_is_deterministic_and_first_appearance_ordered() -> None:
    keys, content = tb.map_keys(["b", "a", "b", "c", "a"], 3)
    assert keys == ["t/000000.png", "t/000001.png", "t/000000.png", "t/000002.png", "t/000001.png"]
    again = tb.map_keys(["b", "a", "b", "c", "a"], 3)
    assert (keys, content) == again
    assert set(content) == set(keys) and all(0 <= i < 3 for i in content.values())


def test_parse_metrics_reads_paths_and_alpha() -> None:
    text = (
        "# TYPE s3latent_read_seconds histogram\n"
        's3latent_read_seconds_count{path="image_hit"} 7.0\n'
        's3latent_read_seconds_count{path="miss"} 3.0\n'
        "# TYPE s3latent_cache_alpha gauge\n"
        "s3latent_cache_alpha 0.35\n"
    )
    assert tb.parse_metrics(text) == {"image_hit": 7.0, "miss": 3.0, "alpha": 0.35}


def test_gateway_config_is_valid_toml_for_the_gateway() -> None:
    from s3latent.config import load_config

    text = tb.gateway_config(
        "tiny",
        {"kind": "tae", "arch": "taesd", "decoder": "/x/d.pth"},
        "img-bucket",
        codec="q8",
        memory=123456,
        alpha=0.0,
        adaptive=True,
        window=40,
        alpha_step=0.1,
    )
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    cfg = load_config(f.name, env={})
    assert cfg.bucket("img-bucket").convert is False
    assert cfg.bucket("other").convert is True and cfg.bucket("other").codec == "q8"
    assert (cfg.cache.memory, cfg.cache.alpha, cfg.cache.adaptive) == (123456, 0.0, True)
    assert (cfg.cache.window, cfg.cache.alpha_step) == (40, 0.1)
    assert cfg.models["tiny"]["decoder"] == "/x/d.pth"


def test_tiny_run_writes_the_json_and_the_plot(tmp_path: Path) -> None:
    out, plot = tmp_path / "trace.json", tmp_path / "alpha.png"
    rc = tb.main([
        "--quick",
        "--backend", f"file://{tmp_path / 'data'}",
        "--requests", "60",
        "--objects", "10",
        "--corpus-items", "4",
        "--sizes", "32",
        "--window", "20",
        "--concurrency", "2",
        "--json", str(out),
        "--plot", str(plot),
        "--workdir", str(tmp_path / "work"),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["configs"]) == set(tb.CONFIGS)
    fields = {"mean_ms", "p50_ms", "p99_ms", "image_hit_ratio", "latent_hit_ratio"}
    for name, c in report["configs"].items():
        assert fields | {"backend_bytes"} <= set(c), name
        assert c["requests"] == 60
        assert 0 < c["p50_ms"] <= c["p99_ms"] and c["mean_ms"] > 0
        assert 0.0 <= c["image_hit_ratio"] <= 1.0 and 0.0 <= c["latent_hit_ratio"] <= 1.0
        assert c["image_hit_ratio"] + c["latent_hit_ratio"] <= 1.0
        assert isinstance(c["backend_bytes"], int) and c["backend_bytes"] > 0
    cfgs = report["configs"]
    assert cfgs["imgstore"]["latent_hit_ratio"] == 0.0  # nothing there is a latent
    assert cfgs["latent_only"]["backend_bytes"] == cfgs["adaptive"]["backend_bytes"]
    # the latent bucket holds containers, not the uploaded images
    assert report["backend_usage"]["latent"]["objects"] >= report["params"]["objects"]
    assert set(report["ratios"]) >= {
        "adaptive_vs_best_static_mean_ms",
        "adaptive_vs_imgstore_p99_ms",
        "latent_vs_imgstore_backend_bytes",
    }
    assert report["adaptive_samples"], "alpha was never sampled"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
