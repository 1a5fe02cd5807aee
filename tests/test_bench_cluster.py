"""`s3latent bench cluster`: the pure pieces, and a tiny run through real gateway processes."""

from __future__ import annotations

import json
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from s3latent.bench import cluster_bench as cb
from s3latent.cli import BENCHMARKS


def test_registered_in_the_cli() -> None:
    assert BENCHMARKS["cluster"] == "s3latent.bench.cluster_bench"
    text = cb.build_parser().format_help()
    assert "--skewed-configs" in text and "3-routed-spill" in text and "--quick" in text


def test_skew_puts_the_most_requested_keys_on_one_owner() -> None:
    keys = [f"k{i % 7}" for i in range(50)] + ["k0"] * 30 + ["k1"] * 20
    owners = {f"k{i}": i % 3 for i in range(7)}  # node 0 owns k0, k3, k6

    def owner(bucket: str, key: str) -> int:
        assert bucket == "b"
        return owners[key]

    skewed, share = cb.skew_keys(keys, "b", owner, hot_node=0)
    # Same length, same popularity profile, only names swapped.
    assert len(skewed) == len(keys)
    assert sorted(Counter(skewed).values()) == sorted(Counter(keys).values())
    # The three most requested objects now all belong to node 0.
    top3 = [k for k, _ in Counter(skewed).most_common(3)]
    assert {owner("b", k) for k in top3} == {0}
    before = sum(owner("b", k) == 0 for k in keys) / len(keys)
    assert share == round(sum(owner("b", k) == 0 for k in skewed) / len(skewed), 4)
    assert share > before
    assert cb.skew_keys(keys, "b", owner, hot_node=0) == (skewed, share)  # deterministic


def test_node_config_adds_decode_threads_and_the_cluster_table(tmp_path: Path) -> None:
    from s3latent.bench.trace_bench import gateway_config
    from s3latent.config import load_config

    base = gateway_config(
        "tiny", {"kind": "tae", "arch": "taesd", "decoder": "/x/d.pth"}, "img",
        codec="q8", memory=3000, alpha=0.5, adaptive=False, window=10, alpha_step=0.1,
    )  # fmt: skip
    nodes = ["http://127.0.0.1:1001", "http://127.0.0.1:1002"]
    text = cb.node_config(
        base, cpu_threads=1, cluster={"forward": True, "spill": False}, nodes=nodes,
        self_url=nodes[1], spill_threshold=4,
    )  # fmt: skip
    data = tomllib.loads(text)
    assert data["decode"]["cpu_threads"] == 1
    assert data["cluster"] == {
        "self": nodes[1], "nodes": nodes, "forward": True, "spill": False, "spill_threshold": 4,
    }  # fmt: skip
    alone = cb.node_config(
        base, cpu_threads=1, cluster=None, nodes=nodes, self_url=nodes[0], spill_threshold=4
    )
    assert "cluster" not in tomllib.loads(alone)
    path = tmp_path / "node.toml"  # the gateway reads it as written
    path.write_text(alone)
    cfg = load_config(str(path), env={})
    assert cfg.decode.cpu_threads == 1 and cfg.cache.memory == 3000


def test_metrics_parsing() -> None:
    text = (
        "# TYPE s3latent_read_seconds histogram\n"
        's3latent_read_seconds_count{path="image_hit"} 7.0\n'
        's3latent_read_seconds_count{path="miss"} 3.0\n'
        "# TYPE s3latent_decode_batch_size histogram\n"
        "s3latent_decode_batch_size_count 2.0\n"
        "s3latent_decode_batch_size_sum 5.0\n"
        "# TYPE s3latent_decode_queue_depth gauge\n"
        "s3latent_decode_queue_depth 3.0\n"
        "# TYPE s3latent_cluster_forwarded counter\n"
        's3latent_cluster_forwarded_total{result="ok"} 11.0\n'
        's3latent_cluster_forwarded_total{result="fallback"} 1.0\n'
        's3latent_cluster_forwarded_created{result="ok"} 1.7e9\n'
        "# TYPE s3latent_cluster_spilled_decodes counter\n"
        's3latent_cluster_spilled_decodes_total{direction="sent"} 4.0\n'
        's3latent_cluster_spilled_decodes_total{direction="received"} 2.0\n'
        "# TYPE s3latent_cluster_ring_members gauge\n"
        "s3latent_cluster_ring_members 3.0\n"
    )
    m = cb.node_counters(text)
    assert m["path:image_hit"] == 7.0 and m["path:miss"] == 3.0
    assert (m["decodes"], m["decode_batches"]) == (5.0, 2.0)
    assert m["s3latent_cluster_ring_members"] == 3.0
    assert not any(k.endswith("_created") or "_created{" in k for k in m)
    assert cb.cluster_count(m, "s3latent_cluster_forwarded_total", result="ok") == 11.0
    assert cb.cluster_count(m, "s3latent_cluster_forwarded_total") == 12.0
    assert cb.cluster_count(m, "s3latent_cluster_spilled_decodes_total", direction="sent") == 4.0
    assert cb.queue_depth(text) == 3.0
    assert cb.queue_depth("nothing\n") != cb.queue_depth("nothing\n")  # NaN: not exposed


def _run(mean: float, p99: float, hit: float, errors: int = 0) -> dict[str, object]:
    return {"mean_ms": mean, "p99_ms": p99, "hit_ratio": hit, "errors": errors}


def test_targets_pass_and_fail_on_the_numbers() -> None:
    results = {
        "trace": {"3-independent": _run(10, 50, 0.40), "3-routed": _run(9, 45, 0.55)},
        "skewed": {"3-routed": _run(20, 100, 0.5), "3-routed-spill": _run(19, 79, 0.5)},
    }
    verdicts = {t["target"].split(":")[0]: t["pass"] for t in cb.targets(results)}
    assert verdicts == {"owner routing": True, "spillover under skew": True, "every GET answered "
                        "200 with the same bytes in every run": True}
    results["skewed"]["3-routed-spill"] = _run(21, 70, 0.5)  # p99 cut, but the mean went up
    results["trace"]["3-routed"] = _run(9, 45, 0.40, errors=1)  # no better than independent
    assert not any(t["pass"] for t in cb.targets(results))


def test_quick_run_through_real_gateways(tmp_path: Path) -> None:
    out, png = tmp_path / "cluster.json", tmp_path / "cluster.png"
    clustered = cb.owner_function(["http://127.0.0.1:1"]) is not None
    configs = ["1-node", "3-independent"] + (["3-routed-spill"] if clustered else [])
    rc = cb.main([
        "--quick",
        "--backend", f"file://{tmp_path / 'data'}",
        "--requests", "40",
        "--objects", "12",
        "--configs", ",".join(configs),
        "--skewed-configs", "3-routed" if clustered else "",
        "--json", str(out),
        "--plot", str(png),
        "--workdir", str(tmp_path / "work"),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert list(report["results"]["trace"]) == configs
    for workload, runs in report["results"].items():
        for name, c in runs.items():
            where = f"{workload}/{name}"
            assert c["requests"] == 40 and c["errors"] == 0, (where, c["error_examples"])
            assert 0 < c["p50_ms"] <= c["p99_ms"] and c["mean_ms"] > 0, where
            assert 0.0 <= c["hit_ratio"] <= 1.0 and c["decodes"] > 0, where
            n_nodes = cb.SETTINGS[name][0]
            assert len(c["nodes"]) == n_nodes, where
            # round-robin: every node got its share of the requests
            assert [n["requests"] for n in c["nodes"]] == [
                len(range(i, 40, n_nodes)) for i in range(n_nodes)
            ], where
            assert all(n["queue_samples"] > 0 for n in c["nodes"]), where
            if cb.SETTINGS[name][1] is None:
                assert c["forwarded"] == 0 and c["spilled"] == 0, where
            else:
                assert all(n["ring_members"] == 3 for n in c["nodes"]), where
                assert c["forwarded"] > 0, where  # 2 in 3 requests reach a non-owner
    # every cached read of every run is counted on some node
    one = report["results"]["trace"]["1-node"]
    assert sum(one["paths"][p] for p in cb.CACHED_PATHS) == 40
    if clustered:
        assert 0 < report["params"]["skewed_hot_share"] <= 1
    checks = {t["target"]: t["pass"] for t in report["targets"]}
    assert checks["every GET answered 200 with the same bytes in every run"] is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", ["2-node", "1-node,nope"])
def test_unknown_configuration_is_refused(bad: str) -> None:
    with pytest.raises(SystemExit):
        cb._split(bad)


def test_emulated_device_holds_each_latent_for_its_service_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench's per-node device: same pixels as the real decode, at least the service
    time per latent, and the core left free while it waits (sleep, not spin)."""
    import torch

    from s3latent.bench import emulated_device
    from s3latent.decode import pipeline

    monkeypatch.setattr(pipeline.DevicePipeline, "_run_decode",
                        pipeline.DevicePipeline._run_decode)  # undone after the test
    dev = pipeline.DevicePipeline(torch.device("cpu"), lambda *a: None)  # type: ignore[arg-type]
    latents = [torch.rand(3, 4, 4) * 2 - 1 for _ in range(2)]
    plain = dev._run_decode(lambda b: b, torch.float32, latents)
    emulated_device.install(service_ms=60)
    wall, cpu = time.perf_counter(), time.process_time()
    held = dev._run_decode(lambda b: b, torch.float32, latents)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert [a.tobytes() for a in held] == [a.tobytes() for a in plain]
    assert wall >= 0.12
    assert cpu < 0.06


def test_emulated_device_wrapper_needs_the_gateway_command() -> None:
    from s3latent.bench import emulated_device

    with pytest.raises(SystemExit):
        emulated_device.main(["--service-ms=10", "serve"])
    assert cb.node_python(None) is None
    assert cb.node_python(80.0)[-2:] == ["s3latent.bench.emulated_device",
                                                     "--service-ms=80.0"]
