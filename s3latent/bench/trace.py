"""Request traces: a seeded synthetic AI-image platform, and CSV files.

The synthetic trace has the properties LatentBox reports for a production
platform: new images keep arriving, popularity is Zipf-like, and an image's
access rate decays with its age (a half-life in requests).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    ts: float
    key: str
    size: int


def synthetic(n_requests: int = 10_000, n_initial: int = 500, arrival_rate: float = 0.02,
              zipf_alpha: float = 0.9, half_life: float = 5_000.0, mean_size: int = 1_000_000,
              seed: int = 0) -> Iterator[Request]:
    """Yield `n_requests` GETs; every object's popularity is zipf rank x age decay."""
    rng = random.Random(seed)
    born: list[int] = []
    weights_base: list[float] = []
    sizes: list[int] = []

    def add(t: int) -> None:
        rank = len(born) + 1
        born.append(t)
        weights_base.append(1.0 / rank ** zipf_alpha)
        sizes.append(max(1024, int(rng.lognormvariate(math.log(mean_size), 0.35))))

    # Shuffle ranks so that new arrivals are not always the least popular.
    for _ in range(n_initial):
        add(0)
    rng.shuffle(weights_base)
    decay = math.log(2) / half_life
    for t in range(n_requests):
        if rng.random() < arrival_rate:
            add(t)
            # A new image gets a random popularity rank among the existing ones.
            weights_base[-1] = 1.0 / rng.randint(1, len(born)) ** zipf_alpha
        weights = [w * math.exp(-decay * (t - b)) for w, b in zip(weights_base, born,
                                                                   strict=True)]
        i = rng.choices(range(len(born)), weights=weights)[0]
        yield Request(float(t), f"img-{i:07d}", sizes[i])


def write_csv(path: Path, requests: Iterable[Request]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "key", "size"])
        for r in requests:
            w.writerow([r.ts, r.key, r.size])


def read_csv(path: Path) -> Iterator[Request]:
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            yield Request(float(row["timestamp"]), row["key"], int(row["size"]))


def generate(*, requests: int = 10_000, objects: int = 500, zipf: float = 0.9,
             half_life: float = 5_000.0, arrival_rate: float = 0.02, seed: int = 0,
             mean_size: int = 1_000_000) -> Iterator[Request]:
    """`synthetic` with the benchmark's flag names."""
    return synthetic(n_requests=requests, n_initial=objects, arrival_rate=arrival_rate,
                     zipf_alpha=zipf, half_life=half_life, mean_size=mean_size, seed=seed)
