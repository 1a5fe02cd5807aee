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


def test_gateway_config_names_the_avif_bucket() -> None:
    import tempfile

    from s3latent.config import load_config

    text = tb.gateway_config(
        "tiny", {"kind": "tae", "arch": "taesd", "decoder": "/x/d.pth"}, "img", codec="q8",
        memory=1, alpha=0.5, adaptive=True, window=40, alpha_step=0.1, avif_bucket="avif-b",
    )
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    cfg = load_config(f.name, env={})
    assert cfg.bucket("avif-b").representation == "avif" and cfg.bucket("avif-b").convert
    assert cfg.bucket("other").representation == "smallest"
    assert cfg.bucket("img").convert is False


class _FakeClient:
    """Answers GETs from a dict; /metrics empty."""

    def __init__(self, bodies: dict[str, bytes], etags: dict[str, str]) -> None:
        self.bodies, self.etags = bodies, etags

    async def get(self, bucket: str, key: str) -> int:
        return 0

    async def get_body(self, bucket: str, key: str) -> tuple[bytes, str]:
        return self.bodies[key], self.etags[key]

    async def metrics(self) -> str:
        return ""


def test_replay_checks_every_body_against_what_head_promised() -> None:
    import asyncio
    import hashlib

    import pytest

    good, bad = b"rendition", b"renditioN"
    md5 = hashlib.md5(good).hexdigest()
    promised = {"a": tb.Promise(len(good), md5)}

    def run(body: bytes, etag: str) -> tb.ReplayResult:
        client = _FakeClient({"a": body}, {"a": etag})
        return asyncio.run(tb.replay(client, "b", ["a"] * 5, concurrency=2,  # type: ignore[arg-type]
                                     sample_every=100, promised=promised))

    assert run(good, md5).verified == 5
    with pytest.raises(tb.BodyMismatch):  # same length, other bytes
        run(bad, md5)
    with pytest.raises(tb.BodyMismatch):  # right bytes, another ETag header
        run(good, hashlib.md5(bad).hexdigest())


def test_representations_run_reads_avif_held_objects_next_to_latent_and_imgstore(
    tmp_path: Path,
) -> None:
    """Issue 15: one run, one trace, ImgStore vs latent-held vs AVIF-held objects."""
    out = tmp_path / "trace.json"
    rc = tb.main([
        "--quick",
        "--representations",
        "--backend", f"file://{tmp_path / 'data'}",
        "--requests", "40",
        "--objects", "8",
        "--corpus-items", "3",
        "--sizes", "32",
        "--window", "20",
        "--concurrency", "2",
        "--json", str(out),
        "--workdir", str(tmp_path / "work"),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    cfgs = report["configs"]
    assert list(cfgs) == ["imgstore", "adaptive", "avif"]
    objects = report["params"]["objects"]
    # every object of the AVIF bucket (and the warm-up object) is held as AVIF, none fell
    # back to a latent: the avif row measures AV1 decodes only
    assert report["avif_stored_as"] == {"avif": objects + 1}
    for name, c in cfgs.items():
        assert c["requests"] == 40 and c["verified_bodies"] == 40, name
        assert 0 < c["p50_ms"] <= c["p99_ms"], name
    # AVIF containers hold the image and the pair's latent: more bytes than the latent alone
    assert cfgs["avif"]["backend_bytes"] > cfgs["adaptive"]["backend_bytes"]
    assert report["backend_usage"]["avif"]["sidecar_objects"] == objects + 1
    ratios = report["representation_ratios"]
    for label in ("latent_vs_imgstore", "avif_vs_imgstore", "avif_vs_latent"):
        for metric in ("mean_ms", "p50_ms", "p99_ms", "backend_bytes"):
            assert ratios[f"{label}_{metric}"] > 0
    assert ratios["avif_vs_imgstore_mean_ms"] == round(
        cfgs["avif"]["mean_ms"] / cfgs["imgstore"]["mean_ms"], 3
    )
    # an AV1 decode is no VAE decode: AVIF-held reads are faster than latent-held ones
    assert ratios["avif_vs_latent_mean_ms"] < 1.0


def test_configs_are_checked_and_representations_selects_three() -> None:
    import pytest

    args = tb.build_parser().parse_args(["--quick", "--configs", "imgstore,avif2"])
    with pytest.raises(SystemExit, match="avif2"):  # before: silently left out
        tb._defaults(args)
    args = tb.build_parser().parse_args(["--quick", "--representations"])
    tb._defaults(args)
    assert args.configs == "imgstore,adaptive,avif"
