"""Conversion refusals are durable: a refused pair is judged once, across restarts.

A pair the gateway refuses (bad sidecar, failed admission, ...) keeps both
objects exactly as uploaded, and HEAD of the image says why. The refusal is
recorded for that exact (image ETag, sidecar ETag) pair in a hidden object of
the bucket, so a restarted gateway neither decodes the pair again nor forgets
the reason, and a newer PUT of either key is converted.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from botocore.exceptions import ClientError
from PIL import Image
from safetensors.torch import save as save_safetensors

from s3latent.backends.local import LocalBackend
from tests.gateway import GatewayProcess
from tests.seaweed import SeaweedFS
from tests.test_latent_objects import _config, make_pair, tiny_model, wait_latent  # noqa: F401

SUFFIX = ".latent.safetensors"


def metrics(gw: GatewayProcess) -> dict[str, float]:
    """The gateway's Prometheus samples, by 'name{labels}'."""
    out: dict[str, float] = {}
    for line in requests.get(gw.endpoint + "/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(gw: GatewayProcess, name: str) -> float:
    """One sample (0 when absent)."""
    return metrics(gw).get(name, 0.0)


class Store:
    """The backend bucket as someone browsing it directly sees it (not through us)."""

    def __init__(self, kind: str, workdir: Path, weed: Any = None) -> None:
        self.kind = kind
        self.data = workdir / "data"
        self.weed = weed
        self.url = f"file://{self.data}" if kind == "local" else weed.endpoint

    def gateway(self, workdir: Path, config: str) -> GatewayProcess:
        keys = None if self.weed is None else (self.weed.access_key, self.weed.secret_key)
        return GatewayProcess(self.url, workdir, config=config, backend_keys=keys)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every backend key under prefix -> its physical ETag."""
        if self.weed is not None:
            out: dict[str, str] = {}
            pages = self.weed.client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix)
            for page in pages:
                out.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
            return out

        async def run() -> dict[str, str]:
            backend = LocalBackend(self.data)
            await backend.start()
            found: dict[str, str] = {}
            start = None
            while True:
                page = await backend.list_objects(bucket, prefix=prefix, start_after=start)
                found.update({e.key: e.etag for e in page.entries})
                if not page.is_truncated:
                    return found
                start = page.next_start_after

        return asyncio.run(run())

    def metadata(self, bucket: str, key: str) -> dict[str, str]:
        """The gateway's metadata on a backend object, as the backend shows it."""
        if self.weed is not None:
            meta = self.weed.client().head_object(Bucket=bucket, Key=key)["Metadata"]
            return {k[len("s3lx-"):]: v for k, v in meta.items() if k.startswith("s3lx-")}

        async def run() -> dict[str, str]:
            backend = LocalBackend(self.data)
            await backend.start()
            return dict((await backend.head_object(bucket, key)).meta.internal)

        return asyncio.run(run())

    def delete(self, bucket: str, key: str) -> None:
        if self.weed is not None:
            self.weed.client().delete_object(Bucket=bucket, Key=key)
            return

        async def run() -> None:
            backend = LocalBackend(self.data)
            await backend.start()
            await backend.delete_object(bucket, key)

        asyncio.run(run())


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[SeaweedFS]:
    """This module's own SeaweedFS: a gateway sweeps every bucket of its backend, and the
    metrics below count attempts and refused pairs across all of them, so pairs left by other
    modules' tests (on the session's SeaweedFS) would be counted too."""
    with SeaweedFS() as weed:
        yield weed


@pytest.fixture(params=["local", "seaweedfs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    weed = request.getfixturevalue("seaweedfs") if request.param == "seaweedfs" else None
    return Store(request.param, tmp_path, weed)


@pytest.fixture
def started(store: Store, tmp_path: Path, tiny_model: dict[str, str]  # noqa: F811
            ) -> Iterator[list[GatewayProcess]]:
    """Gateways started by a test; all are stopped at the end."""
    procs: list[GatewayProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def start(store: Store, tmp_path: Path, model: dict[str, str], procs: list[GatewayProcess]
          ) -> GatewayProcess:
    proc = store.gateway(tmp_path, _config(model))
    proc.start()
    procs.append(proc)
    return proc


def client_view(s3: Any, bucket: str, key: str) -> tuple[Any, ...]:
    """Everything a client can see of an object."""
    head = s3.head_object(Bucket=bucket, Key=key)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return (head["ETag"], head["LastModified"], head["ContentLength"], head["ContentType"],
            head["Metadata"], body)


def state_of(s3: Any, bucket: str, key: str) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"].get(
        "x-s3latent-state", "")


def wait_state(s3: Any, bucket: str, key: str, want: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = state_of(s3, bucket, key)
        if want in state:
            return state
        time.sleep(0.2)
    raise AssertionError(f"state of {key} is {state!r}, not {want!r}")


def wait_metric(gw: GatewayProcess, name: str, at_least: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(gw, name) >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} stayed below {at_least}: {metric(gw, name)}")


BAD_SIDECAR = save_safetensors({"latent": torch.zeros(3, 16, 16)}, metadata={"model": "tiny"})
ATTEMPTS = "s3latent_conversion_attempts_total"


def test_refusal_is_judged_once_and_survives_restart(
        store: Store, tmp_path: Path, tiny_model: dict[str, str],  # noqa: F811
        started: list[GatewayProcess]) -> None:
    first = start(store, tmp_path, tiny_model, started)
    s3 = first.client()
    bucket = f"r-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    image, good_sidecar, _ = make_pair(tiny_model, seed=31)
    s3.put_object(Bucket=bucket, Key="r.png", Body=image, ContentType="image/png",
                  Metadata={"origin": "refusal-test"})
    s3.put_object(Bucket=bucket, Key="r.png" + SUFFIX, Body=BAD_SIDECAR,
                  Metadata={"side": "1"})
    before = (client_view(s3, bucket, "r.png"), client_view(s3, bucket, "r.png" + SUFFIX))
    state = wait_state(s3, bucket, "r.png", "refused")
    assert "bad sidecar" in state and "channel" in state
    assert metric(first, ATTEMPTS) == 1
    assert metric(first, 's3latent_conversions_total{reason="bad sidecar",result="rejected"}') \
        == 1
    wait_metric(first, "s3latent_sweeps_total", metric(first, "s3latent_sweeps_total") + 2)
    assert metric(first, ATTEMPTS) == 1, "the sweeper judged the refused pair again"
    assert metric(first, 's3latent_conversion_skips_total{by="sweeper"}') >= 1
    # Recording the refusal changed nothing a client sees, and lists nothing new.
    after = (client_view(s3, bucket, "r.png"), client_view(s3, bucket, "r.png" + SUFFIX))
    assert after == before
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == ["r.png", "r.png" + SUFFIX]
    assert list(store.keys(bucket, ".s3latent/refused/")) == [".s3latent/refused/r.png"]
    first.stop()

    second = start(store, tmp_path, tiny_model, started)
    s3 = second.client()
    headers = s3.head_object(Bucket=bucket, Key="r.png")["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-s3latent-representation"] == "plain"
    assert headers["x-s3latent-state"] == state
    wait_metric(second, "s3latent_sweeps_total", metric(second, "s3latent_sweeps_total") + 2)
    assert metric(second, ATTEMPTS) == 0, "a restarted gateway judged the refused pair again"
    assert metric(second, 's3latent_conversion_skips_total{by="sweeper"}') >= 1
    assert metric(second, "s3latent_refused_pairs") == 1
    assert (client_view(s3, bucket, "r.png"), client_view(s3, bucket, "r.png" + SUFFIX)) \
        == before
    # A fixed sidecar is a new pair: converted, and the marker goes.
    s3.put_object(Bucket=bucket, Key="r.png" + SUFFIX, Body=good_sidecar)
    head = wait_latent(s3, bucket, "r.png")
    assert "x-s3latent-state" not in head["ResponseMetadata"]["HTTPHeaders"]
    assert metric(second, ATTEMPTS) == 1
    assert store.keys(bucket, ".s3latent/refused/") == {}


def test_newer_image_is_a_new_pair(store: Store, tmp_path: Path,
                                   tiny_model: dict[str, str],  # noqa: F811
                                   started: list[GatewayProcess]) -> None:
    gw = start(store, tmp_path, tiny_model, started)
    s3 = gw.client()
    bucket = f"r-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    image, sidecar, pixels = make_pair(tiny_model, seed=32)
    noise = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    other = out.getvalue()  # same size, nothing like this latent's decode
    s3.put_object(Bucket=bucket, Key="n.png", Body=other, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="n.png" + SUFFIX, Body=sidecar)
    assert "admission policy failed" in wait_state(s3, bucket, "n.png", "refused")
    s3.put_object(Bucket=bucket, Key="n.png", Body=image, ContentType="image/png")
    wait_latent(s3, bucket, "n.png")
    assert store.keys(bucket, ".s3latent/refused/") == {}


def test_deleting_a_refused_pair_leaves_no_record(store: Store, tmp_path: Path,
                                                  tiny_model: dict[str, str],  # noqa: F811
                                                  started: list[GatewayProcess]) -> None:
    gw = start(store, tmp_path, tiny_model, started)
    s3 = gw.client()
    bucket = f"r-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    image, _, _ = make_pair(tiny_model, seed=34)
    s3.put_object(Bucket=bucket, Key="d.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="d.png" + SUFFIX, Body=BAD_SIDECAR)
    wait_state(s3, bucket, "d.png", "refused")
    # The gateway's records are not a client's to read or write.
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key=".s3latent/refused/d.png")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=".s3latent/refused/x.png", Body=b"{}")
    assert exc.value.response["Error"]["Code"] == "InvalidArgument"
    assert s3.list_objects_v2(Bucket=bucket, Prefix=".s3latent/")["KeyCount"] == 0
    s3.delete_object(Bucket=bucket, Key="d.png" + SUFFIX)
    assert store.keys(bucket, ".s3latent/") == {}
    s3.delete_object(Bucket=bucket, Key="d.png")
    s3.delete_bucket(Bucket=bucket)


def test_in_process_layer_reads_the_record(tmp_path: Path,
                                           tiny_model: dict[str, str]) -> None:  # noqa: F811
    """A new layer over the same backend, without its sweeper: HEAD alone finds the reason,
    and converting again is answered from the record without decoding."""
    from prometheus_client import CollectorRegistry

    from s3latent.config import load_config
    from s3latent.decode.services import DecodeServices
    from s3latent.objects.latent_store import LatentStore

    gw = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path, config=_config(tiny_model))
    gw.start()
    try:
        s3 = gw.client()
        s3.create_bucket(Bucket="inproc")
        image, _, _ = make_pair(tiny_model, seed=35)
        s3.put_object(Bucket="inproc", Key="i.png", Body=image, ContentType="image/png")
        s3.put_object(Bucket="inproc", Key="i.png" + SUFFIX, Body=BAD_SIDECAR)
        state = wait_state(s3, "inproc", "i.png", "refused")
    finally:
        gw.stop()
    config_file = tmp_path / "layer.toml"
    config_file.write_text(_config(tiny_model))

    async def run() -> tuple[str | None, str, float]:
        cfg = load_config(str(config_file), backend=f"file://{tmp_path / 'data'}")
        backend = LocalBackend(tmp_path / "data")
        registry = CollectorRegistry()
        layer = LatentStore(backend, cfg, DecodeServices(cfg, registry), registry=registry,
                            background=False)
        await layer.start()
        try:
            await layer.head_object("inproc", "i.png")
            seen = layer.state("inproc", "i.png")
            outcome = await layer.converter.convert("inproc", "i.png")
            attempts = registry.get_sample_value("s3latent_conversion_attempts_total") or 0.0
            return seen, outcome, attempts
        finally:
            await layer.close()

    seen, outcome, attempts = asyncio.run(run())
    assert seen == state
    assert outcome == "refused earlier: " + state.removeprefix("refused: ")
    assert attempts == 0


def test_changed_settings_judge_again(tmp_path: Path,
                                      tiny_model: dict[str, str]) -> None:  # noqa: F811
    """A refusal holds under the settings it was judged with: lower the bar, and the
    restarted gateway converts the pair it refused before."""
    store = Store("local", tmp_path)
    strict = store.gateway(tmp_path, _config(tiny_model))
    strict.start()
    try:
        s3 = strict.client()
        s3.create_bucket(Bucket="bar")
        _, sidecar, pixels = make_pair(tiny_model, seed=36)
        noise = np.random.default_rng(1).integers(0, 256, pixels.shape, dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(noise).save(out, "PNG")
        s3.put_object(Bucket="bar", Key="s.png", Body=out.getvalue(), ContentType="image/png")
        s3.put_object(Bucket="bar", Key="s.png" + SUFFIX, Body=sidecar)
        assert "admission policy failed" in wait_state(s3, "bar", "s.png", "refused")
    finally:
        strict.stop()
    lenient = store.gateway(tmp_path, _config(tiny_model).replace(
        'codec = "q8"\n', 'codec = "q8"\nmin_psnr = 1.0\n'))
    lenient.start()
    try:
        s3 = lenient.client()
        assert "refused" not in state_of(s3, "bar", "s.png")
        wait_latent(s3, "bar", "s.png")
        assert metric(lenient, ATTEMPTS) == 1
        assert store.keys("bar", ".s3latent/refused/") == {}
    finally:
        lenient.stop()
