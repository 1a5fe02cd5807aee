"""Eviction policies on the same traces and byte budgets: ours vs libCacheSim's.

libcachesim (Python bindings of libCacheSim, from the group behind S3-FIFO and
SIEVE) is the yardstick: our implementation of a policy should land within 2
points of miss ratio of theirs. Prints a table; `--json FILE` writes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from typing import Any

from ..cache.policies import make_cache
from .trace import Request, generate

POLICIES = ("lru", "s3fifo")


def traces(n: int, seed: int) -> dict[str, list[Request]]:
    return {
        "ai-platform": list(generate(requests=n, objects=2000, zipf=0.9, half_life=n / 4,
                                     arrival_rate=0.02, seed=seed, mean_size=64_000)),
        "zipf-static": list(generate(requests=n, objects=5000, zipf=0.8, half_life=1e12,
                                     arrival_rate=0.0, seed=seed + 1, mean_size=64_000)),
    }


def ours(policy: str, requests: Sequence[Request], budget: int) -> tuple[float, float]:
    cache = make_cache(policy, budget)
    misses = miss_bytes = total_bytes = 0
    for r in requests:
        total_bytes += r.size
        if cache.get(r.key) is None:
            misses += 1
            miss_bytes += r.size
            cache.put(r.key, True, r.size)
    return misses / len(requests), miss_bytes / total_bytes


def theirs(policy: str, requests: Sequence[Request], budget: int) -> tuple[float, float]:
    import libcachesim as lcs

    cache = lcs.LRU(budget) if policy == "lru" else lcs.S3FIFO(budget)
    ids: dict[str, int] = {}
    misses = miss_bytes = total_bytes = 0
    req = lcs.Request()
    for r in requests:
        req.obj_id = ids.setdefault(r.key, len(ids) + 1)
        req.obj_size = r.size
        total_bytes += r.size
        if not cache.get(req):
            misses += 1
            miss_bytes += r.size
    return misses / len(requests), miss_bytes / total_bytes


def run(n: int = 20_000, fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.2),
        seed: int = 0) -> dict[str, Any]:
    rows = []
    for name, requests in traces(n, seed).items():
        footprint = sum({r.key: r.size for r in requests}.values())
        for fraction in fractions:
            budget = int(footprint * fraction)
            row: dict[str, Any] = {"trace": name, "budget_fraction": fraction, "budget": budget}
            for policy in POLICIES:
                row[f"{policy}_ours"] = ours(policy, requests, budget)[0]
                try:
                    row[f"{policy}_libcachesim"] = theirs(policy, requests, budget)[0]
                except ImportError:
                    row[f"{policy}_libcachesim"] = None
            rows.append(row)
    return {"machine": {"python": sys.version.split()[0], "platform": platform.platform()},
            "requests_per_trace": n, "rows": rows}


def table(result: dict[str, Any]) -> str:
    head = ("| trace | budget | LRU ours | LRU libCacheSim | S3-FIFO ours | S3-FIFO libCacheSim "
            "| S3-FIFO vs LRU (ours, points) |")
    lines = [head, "|" + "---|" * 7]
    for r in result["rows"]:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v * 100:.2f}%"
        gain = (r["lru_ours"] - r["s3fifo_ours"]) * 100
        lines.append(f"| {r['trace']} | {r['budget_fraction']:.0%} | {pct(r['lru_ours'])} | "
                     f"{pct(r['lru_libcachesim'])} | {pct(r['s3fifo_ours'])} | "
                     f"{pct(r['s3fifo_libcachesim'])} | {gain:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3latent bench policies", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    result = run(args.requests, seed=args.seed)
    print(table(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
