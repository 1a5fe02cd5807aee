"""Eviction policies, the dual-format cache and the adaptive resizer."""

from __future__ import annotations

import random

import pytest

from s3latent.bench.trace import generate, read_csv, write_csv
from s3latent.cache.dual import DualCache
from s3latent.cache.policies import LRUByteCache, S3FIFOByteCache, make_cache
from s3latent.cache.resizer import AdaptiveResizer


@pytest.mark.parametrize("policy", ["lru", "s3fifo"])
def test_byte_accounting_and_shrink(policy: str) -> None:
    cache = make_cache(policy, 100)
    for i in range(20):
        cache.put(i, b"x" * 10, 10)
        assert cache.used_bytes <= 100
    assert len(cache) == 10 and cache.used_bytes == 100
    assert cache.put("huge", b"", 101) == [] and "huge" not in cache
    cache.capacity = 35
    assert cache.used_bytes <= 35 and len(cache) == 3
    cache.remove(next(k for k in range(20) if k in cache))
    assert cache.used_bytes == 20


def test_lru_order() -> None:
    cache = LRUByteCache(30)
    for k in "abc":
        cache.put(k, k, 10)
    cache.get("a")
    assert cache.put("d", "d", 10) == ["b"]


def test_s3fifo_keeps_reused_and_drops_one_hit_wonders() -> None:
    cache = S3FIFOByteCache(100)
    cache.put("hot", 1, 10)
    cache.get("hot")  # accessed while in the small queue: promoted on eviction
    for i in range(30):  # a scan of one-hit wonders
        cache.put(f"scan{i}", 1, 10)
    assert "hot" in cache
    assert sum(f"scan{i}" in cache for i in range(30)) <= 9
    # A ghost returning goes to main directly.
    cache.put("scan0", 1, 10)
    assert "scan0" in cache


def test_s3fifo_beats_lru_on_zipf_with_scans() -> None:
    rng = random.Random(1)
    keys = [f"k{int(rng.paretovariate(1.0)) % 500}" if rng.random() < 0.8 else f"s{i}"
            for i in range(20_000)]
    misses = {}
    for name in ("lru", "s3fifo"):
        cache, miss = make_cache(name, 60 * 100), 0
        for k in keys:
            if cache.get(k) is None:
                miss += 1
                cache.put(k, k, 100)
        misses[name] = miss / len(keys)
    assert misses["s3fifo"] <= misses["lru"]


def test_dual_cache_split_promotion_and_invalidation() -> None:
    dual = DualCache(1000, alpha=0.3, promote_after=2)
    dual.put_latent("k", b"l" * 50)
    assert dual.get_latent("k") is not None and not dual.should_promote("k")
    dual.get_latent("k")
    assert dual.should_promote("k")
    dual.put_image("k", b"i" * 200)
    assert dual.get_image("k") == b"i" * 200
    dual.alpha = 0.1  # the image tier shrinks to 100 bytes: the image goes
    assert dual.get_image("k") is None and dual.stats["image_bytes"] == 0
    dual.invalidate("k")
    assert dual.get_latent("k") is None and not dual.should_promote("k")
    assert dual.stats["latent_hits"] == 2 and dual.stats["image_hits"] == 1


def _drive(resizer: AdaptiveResizer, *, n: int, objects: int, image: int, latent: int,
           costs: dict[str, float]) -> list[float]:
    rng = random.Random(0)
    dual = DualCache(int(resizer._shadows[0].memory / resizer.sample_rate), resizer.alpha)
    weights = [1 / (i + 1) ** 0.8 for i in range(objects)]  # Zipf-like popularity
    alphas = []
    for key_index in rng.choices(range(objects), weights=weights, k=n):
        key = f"o{key_index}"
        if dual.get_image(key) is not None:
            path = "image_hit"
        elif dual.get_latent(key) is not None:
            path = "latent_hit"
            if dual.should_promote(key):
                dual.put_image(key, b"i" * image)
        else:
            path = "miss"
            dual.put_latent(key, b"l" * latent)
        moved = resizer.record(key, image, latent, path, costs[path])
        if moved is not None:
            dual.alpha = moved
            alphas.append(moved)
    return alphas


def test_resizer_moves_toward_images_when_decode_is_slow() -> None:
    r = AdaptiveResizer(3_000_000, 0.5, window=1000, step=0.05, sample_rate=0.5)
    alphas = _drive(r, n=10_000, objects=2000, image=20_000, latent=4_000,
                    costs={"image_hit": 0.001, "latent_hit": 0.2, "miss": 0.25})
    assert alphas and alphas[-1] > 0.5
    assert all(0.05 <= a <= 0.95 for a in alphas)
    assert all(abs(b - a) <= 0.05 + 1e-9 for a, b in zip([0.5, *alphas], alphas, strict=False))


def test_resizer_moves_toward_latents_when_decode_is_cheap() -> None:
    r = AdaptiveResizer(3_000_000, 0.5, window=1000, step=0.05, sample_rate=0.5)
    alphas = _drive(r, n=10_000, objects=2000, image=20_000, latent=2_000,
                    costs={"image_hit": 0.001, "latent_hit": 0.002, "miss": 0.5})
    assert alphas and alphas[-1] < 0.5
    assert min(alphas) >= 0.05


def test_trace_is_deterministic_and_round_trips(tmp_path: object) -> None:
    a = list(generate(requests=500, objects=50, seed=3))
    b = list(generate(requests=500, objects=50, seed=3))
    assert a == b and len({r.key for r in a}) > 10
    counts: dict[str, int] = {}
    for r in a:
        counts[r.key] = counts.get(r.key, 0) + 1
    assert max(counts.values()) > 500 / len(counts) * 3  # skewed popularity
    path = tmp_path / "t.csv"  # type: ignore[operator]
    write_csv(path, a)
    assert list(read_csv(path)) == a


def test_policies_match_libcachesim_within_two_points() -> None:
    pytest.importorskip("libcachesim")
    from s3latent.bench.policy_compare import ours, theirs, traces

    for requests in traces(4000, seed=5).values():
        footprint = sum({r.key: r.size for r in requests}.values())
        for fraction in (0.05, 0.2):
            budget = int(footprint * fraction)
            for policy in ("lru", "s3fifo"):
                mine, ref = ours(policy, requests, budget)[0], theirs(policy, requests, budget)[0]
                assert abs(mine - ref) <= 0.02, (policy, fraction, mine, ref)


def test_read_cache_publishes_estimates_on_every_decision() -> None:
    """The estimate gauges follow each window, also when alpha stays where it is."""
    from prometheus_client import CollectorRegistry, generate_latest

    from s3latent.cache.readpath import ReadCache
    from s3latent.config import CacheSettings

    registry = CollectorRegistry()
    cache = ReadCache(CacheSettings(memory=1_000_000, window=10, sample_rate=1.0), registry)
    for i in range(10):  # every read the same cost: no candidate is better, alpha stays
        cache.record("b", f"k{i % 3}", "image_hit", 0.001, 1000, 100)
    assert cache.dual.alpha == 0.5
    text = generate_latest(registry).decode()
    assert 's3latent_cache_alpha_estimate_seconds{alpha="0.50"} 0.001' in text


@pytest.mark.parametrize("table", [
    {"alpha": 1.5}, {"alpha_min": 0.6, "alpha_max": 0.4}, {"sample_rate": 0.0},
    {"sample_rate": 2}, {"window": 0}, {"promote_after": 0}, {"policy": "fifo"},
])
def test_cache_settings_out_of_range_are_refused(tmp_path: object, table: dict) -> None:
    from s3latent.config import ConfigError, load_config

    path = tmp_path / "c.toml"  # type: ignore[operator]
    path.write_text("[cache]\n" + "".join(f"{k} = {v!r}\n" for k, v in table.items()))
    with pytest.raises(ConfigError, match=r"\[cache\]"):
        load_config(path, env={})
