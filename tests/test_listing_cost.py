"""Listings cost a bounded number of backend calls per page, whatever the page holds.

Converted objects list with their logical sizes, ETags and dates, which the
backend listing does not give. A gateway with a cold cache (just restarted)
resolves them from the view index: at most LIST_CALLS listing calls of the
page itself and INDEX_CALLS of the index per page, and no HEAD at all. Only
containers the index lacks cost a HEAD, once: the listing writes the entry back.

Also: a container's backend metadata says how it is stored (codec, model,
admission PSNR), for people browsing the backend bucket.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import GatewayProcess
from tests.test_latent_objects import make_pair, tiny_model, wait_latent  # noqa: F401
from tests.test_refusals import SUFFIX, Store, metrics, seaweedfs, start, store  # noqa: F401

# Per page: the page (a second call when it had to step over the hidden range) and
# the view index (a second call only with stale entries in the way).
LIST_CALLS, INDEX_CALLS = 2, 2
CALLS_PER_PAGE = LIST_CALLS + INDEX_CALLS
PAIRS, PLAIN = 6, 4


def calls(gw: GatewayProcess) -> dict[str, float]:
    """s3latent_list_backend_calls_total by kind, and pages answered."""
    samples = metrics(gw)
    out = {kind: samples.get(f's3latent_list_backend_calls_total{{kind="{kind}"}}', 0.0)
           for kind in ("list", "index", "head", "index_write")}
    out["pages"] = samples.get("s3latent_list_pages_total", 0.0)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def listing(s3: Any, bucket: str, **kwargs: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """All pages of a ListObjectsV2: (objects, common prefixes)."""
    objects: list[dict[str, Any]] = []
    prefixes: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs):
        objects += page.get("Contents", [])
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return objects, prefixes


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    procs: list[GatewayProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def fill(s3: Any, bucket: str, model: dict[str, str]) -> None:
    """PAIRS converted pairs (half under d/) and PLAIN plain objects."""
    s3.create_bucket(Bucket=bucket)
    keys = []
    for i in range(PAIRS):
        key = f"{'d/' if i % 2 else ''}img-{i:02d}.png"
        image, sidecar, _ = make_pair(model, seed=100 + i)
        s3.put_object(Bucket=bucket, Key=key, Body=image, ContentType="image/png")
        s3.put_object(Bucket=bucket, Key=key + SUFFIX, Body=sidecar)
        keys.append(key)
    for i in range(PLAIN):
        s3.put_object(Bucket=bucket, Key=f"{'d/' if i % 2 else ''}plain-{i}.txt",
                      Body=b"x" * (10 + i))
    for key in keys:
        wait_latent(s3, bucket, key)


def wait_stubbed(backend: Store, bucket: str, timeout: float = 150.0) -> dict[str, str]:
    """Until every conversion finished (sidecar stubbed, both indexed): key -> ETag.
    (20 s alone; 64 s was not enough once in a full CI run on a loaded machine.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = backend.keys(bucket)
        sides = [etag for key, etag in keys.items() if key.endswith(SUFFIX)]
        indexed = [key for key in keys if key.startswith(".s3latent/v/")]
        if len(sides) == PAIRS and all(etag.endswith("-1") for etag in sides) and \
                len(indexed) == 2 * PAIRS:
            return keys
        time.sleep(0.2)
    raise AssertionError("sidecars were not all stubbed")


def test_listing_calls_per_page_are_bounded(store: Store, tmp_path: Path,  # noqa: F811
                                            tiny_model: dict[str, str],  # noqa: F811
                                            gateways: list[GatewayProcess]) -> None:
    first = start(store, tmp_path, tiny_model, gateways)
    s3 = first.client()
    bucket = f"lc-{uuid.uuid4().hex[:10]}"
    fill(s3, bucket, tiny_model)
    physical = wait_stubbed(store, bucket)
    converted = [k for k, etag in physical.items() if etag.endswith("-1")
                 and not k.startswith(".s3latent/")]
    assert len(converted) == 2 * PAIRS
    truth = {o["Key"]: (o["Size"], o["ETag"], o["LastModified"])
             for o in listing(s3, bucket)[0]}
    for key in converted:  # the listing agrees with HEAD, not with the backend
        head = s3.head_object(Bucket=bucket, Key=key)
        size, etag, modified = truth[key]
        assert (size, etag, int(modified.timestamp())) == \
            (head["ContentLength"], head["ETag"], int(head["LastModified"].timestamp()))
    assert len(truth) == 2 * PAIRS + PLAIN
    first.stop()

    # A restarted gateway knows nothing in memory: the index answers, no HEADs.
    cold = start(store, tmp_path, tiny_model, gateways)
    s3 = cold.client()
    for kwargs in ({}, {"PaginationConfig": {"PageSize": 5}},
                   {"Prefix": "d/", "PaginationConfig": {"PageSize": 3}}):
        before = calls(cold)
        objects, _ = listing(s3, bucket, **kwargs)
        used = delta(calls(cold), before)
        assert used["head"] == 0, (kwargs, used)
        assert used["list"] <= LIST_CALLS * used["pages"], (kwargs, used)
        assert used["index"] <= INDEX_CALLS * used["pages"], (kwargs, used)
        for o in objects:
            assert (o["Size"], o["ETag"], o["LastModified"]) == truth[o["Key"]]
        # Only the first listing had to ask the index; the others hit the memory cache.
        if kwargs:
            assert used["index"] == 0, (kwargs, used)
    before = calls(cold)
    objects, prefixes = listing(s3, bucket, Delimiter="/")
    used = delta(calls(cold), before)
    assert prefixes == ["d/"]
    assert sorted(o["Key"] for o in objects) == sorted(k for k in truth if "/" not in k)
    assert used["list"] + used["index"] <= CALLS_PER_PAGE * used["pages"]
    cold.stop()

    # Containers the index lacks (written before it existed): one HEAD each, once.
    for key in store.keys(bucket, ".s3latent/v/"):
        store.delete(bucket, key)
    repairing = start(store, tmp_path, tiny_model, gateways)
    s3 = repairing.client()
    before = calls(repairing)
    objects, _ = listing(s3, bucket)
    used = delta(calls(repairing), before)
    assert used["head"] == 2 * PAIRS
    assert {o["Key"]: (o["Size"], o["ETag"], o["LastModified"]) for o in objects} == truth
    deadline = time.monotonic() + 30
    while calls(repairing)["index_write"] < 2 * PAIRS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert calls(repairing)["index_write"] == 2 * PAIRS
    repairing.stop()
    repaired = start(store, tmp_path, tiny_model, gateways)
    before = calls(repaired)
    objects, _ = listing(repaired.client(), bucket)
    assert delta(calls(repaired), before)["head"] == 0
    assert {o["Key"]: (o["Size"], o["ETag"], o["LastModified"]) for o in objects} == truth


def test_container_metadata_says_how_it_is_stored(store: Store, tmp_path: Path,  # noqa: F811
                                                  tiny_model: dict[str, str],  # noqa: F811
                                                  gateways: list[GatewayProcess]) -> None:
    gw = start(store, tmp_path, tiny_model, gateways)
    s3 = gw.client()
    bucket = f"lm-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    image, sidecar, _ = make_pair(tiny_model, seed=140)
    s3.put_object(Bucket=bucket, Key="m.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="m.png" + SUFFIX, Body=sidecar)
    wait_latent(s3, bucket, "m.png")
    meta = store.metadata(bucket, "m.png")
    assert meta["rep"] == "latent" and meta["codec"] == "q8" and meta["model"] == "tiny"
    assert meta["psnr"] == "exact" or float(meta["psnr"]) >= 40.0
    assert int(meta["lsize"]) == s3.head_object(Bucket=bucket, Key="m.png")["ContentLength"]
    # A copy is stored the same way and says so.
    s3.copy_object(Bucket=bucket, Key="copy.png", CopySource={"Bucket": bucket, "Key": "m.png"})
    copied = store.metadata(bucket, "copy.png")
    assert {k: copied[k] for k in ("codec", "model", "psnr")} == \
        {k: meta[k] for k in ("codec", "model", "psnr")}
