"""The cluster: ring, peer auth, owner routing, invalidation, spillover, failure, SIGTERM.

Three gateway processes over one SeaweedFS on loopback, each with [cluster] naming the
others; one of them decodes slowly (a long batching wait) with spill_threshold 0, so its
decode queue is deep whenever reads come in together.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from s3latent.cluster import peerauth, ring
from s3latent.config import ConfigError, load_config
from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess, free_port
from tests.test_latent_objects import make_pair, tiny_model, wait_latent  # noqa: F401

SECRET = "cluster-test-secret-0123456789"


# -- units --------------------------------------------------------------------------
def test_rendezvous_is_stable_pairs_share_and_loss_moves_only_the_lost_keys() -> None:
    nodes = ["http://a:1", "http://b:1", "http://c:1"]
    keys = [f"k{i}.png" for i in range(600)]
    owners = {k: ring.owner(nodes, "b", k) for k in keys}
    assert owners == {k: ring.owner(list(reversed(nodes)), "b", k) for k in keys}
    assert {owners[k] for k in keys} == set(nodes)  # every node owns some
    suffix = ".latent.safetensors"
    assert all(ring.owner(nodes, "b", ring.image_key(k + suffix, suffix)) == owners[k]
               for k in keys)
    survivors = ["http://a:1", "http://c:1"]
    for k in keys:
        moved = ring.owner(survivors, "b", k)
        if owners[k] != "http://b:1":
            assert moved == owners[k]  # keys of live nodes stay where they are


def test_peer_signatures() -> None:
    path = "/_s3latent/peer/invalidate?bucket=b&key=k"
    headers = peerauth.sign(SECRET, "POST", path, "http://a:1")
    ident = peerauth.verify(SECRET, "POST", path, headers)
    assert ident.node == "http://a:1"
    with pytest.raises(peerauth.PeerAuthError):
        peerauth.verify(SECRET, "POST", path, {})
    with pytest.raises(peerauth.PeerAuthError):
        peerauth.verify("another-secret-0123456789", "POST", path, headers)
    with pytest.raises(peerauth.PeerAuthError):
        peerauth.verify(SECRET, "POST", path.replace("key=k", "key=x"), headers)
    with pytest.raises(peerauth.PeerAuthError):
        peerauth.verify(SECRET, "POST", path, peerauth.sign(SECRET, "POST", path, "http://a:1",
                                                            now=time.time() - 60))
    body = peerauth.sign(SECRET, "POST", path, "http://a:1", body=b"container")
    with pytest.raises(peerauth.PeerAuthError):
        peerauth.check_body(peerauth.verify(SECRET, "POST", path, body), b"tampered")


def test_cluster_config(tmp_path: Path) -> None:
    good = '[cluster]\nself = "http://127.0.0.1:1"\nnodes = ["http://127.0.0.1:1"]\n'
    (tmp_path / "c.toml").write_text(good)
    cfg = load_config(tmp_path / "c.toml", env={"S3LATENT_CLUSTER_SECRET": SECRET})
    assert cfg.cluster is not None and cfg.cluster.secret == SECRET and cfg.cluster.forward
    with pytest.raises(ConfigError, match="S3LATENT_CLUSTER_SECRET"):
        load_config(tmp_path / "c.toml", env={})
    (tmp_path / "s.toml").write_text(good + 'secret = "in-the-file-0123456789"\n')
    with pytest.raises(ConfigError, match="must not be in the config file"):
        load_config(tmp_path / "s.toml", env={"S3LATENT_CLUSTER_SECRET": SECRET})
    (tmp_path / "b.toml").write_text('[cluster]\nself = "10.0.0.1"\nnodes = []\n')
    with pytest.raises(ConfigError):
        load_config(tmp_path / "b.toml", env={"S3LATENT_CLUSTER_SECRET": SECRET})


# -- three nodes ---------------------------------------------------------------------
def _metric(node: GatewayProcess, name: str, labels: str = "") -> float:
    text = requests.get(node.endpoint + "/metrics", timeout=5).text
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    m = re.search("^" + pattern + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_members(nodes: list[GatewayProcess], count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_metric(n, "s3latent_cluster_ring_members") == count for n in nodes):
            return
        time.sleep(0.2)
    raise AssertionError(f"ring did not reach {count} members")


@pytest.fixture(scope="module")
def cluster(seaweedfs: Any, tiny_model: dict[str, str],  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    workdir = tmp_path_factory.mktemp("cluster")
    used: set[int] = set()
    ports = [free_port(used) for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    nodes = []
    for i, port in enumerate(ports):
        # Node 0 batches decodes slowly and spills at once; the others decode at once.
        decode = "max_wait_ms = 400.0\n" if i == 0 else ""
        spill = "spill_threshold = 0\n" if i == 0 else "spill = false\n"
        config = (f'[models.tiny]\nkind = "tae"\narch = "taesd"\n'
                  f'decoder = "{tiny_model["decoder"]}"\n[buckets."*"]\ncodec = "q8"\n'
                  f"[server]\nsweep_interval_s = 1.0\n[decode]\n{decode}"
                  # SSE-C reads are forwarded in these tests, over plain HTTP on loopback.
                  "[encryption]\nsse_c_require_tls = false\n"
                  f'[cluster]\nself = "{urls[i]}"\nnodes = {urls!r}\n'.replace("'", '"')
                  + f"health_interval_s = 0.3\nhealth_timeout_s = 0.5\nfail_after = 2\n{spill}")
        nodes.append(GatewayProcess(seaweedfs.endpoint, workdir, config=config,
                                    backend_keys=(seaweedfs.access_key, seaweedfs.secret_key),
                                    env={"S3LATENT_CLUSTER_SECRET": SECRET}, port=port,
                                    name=f"node{i}"))
    try:
        for node in nodes:
            node.start()
        _wait_members(nodes, 3)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _owned_by(nodes: list[GatewayProcess], index: int, bucket: str, prefix: str,
              count: int = 1) -> list[str]:
    urls = [n.endpoint for n in nodes]
    keys = [f"{prefix}{i}.png" for i in range(500)]
    return [k for k in keys if ring.owner(urls, bucket, k) == urls[index]][:count]


@pytest.fixture
def cbucket(cluster: list[GatewayProcess]) -> str:
    name = f"c-{uuid.uuid4().hex[:10]}"
    cluster[1].client().create_bucket(Bucket=name)
    return name


def test_peer_endpoints_refuse_unsigned_expired_and_client_credentials(
        cluster: list[GatewayProcess]) -> None:
    node = cluster[0]
    url = node.endpoint + "/_s3latent/peer/health"
    r = requests.get(url, timeout=5)
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content
    assert r.headers["x-amz-request-id"] in r.text
    signed = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256":
                                                        peerauth.EMPTY_SHA256})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(signed)
    assert requests.get(url, headers=dict(signed.headers), timeout=5).status_code == 403
    old = peerauth.sign(SECRET, "GET", "/_s3latent/peer/health", "http://x:1",
                        now=time.time() - 120)
    assert requests.get(url, headers=old, timeout=5).status_code == 403
    ok = peerauth.sign(SECRET, "GET", "/_s3latent/peer/health", "http://x:1")
    r = requests.get(url, headers=ok, timeout=5)
    assert r.status_code == 200 and r.json()["node"] == node.endpoint
    # A forwarded read needs the signature too, whatever client credentials come along.
    s3 = node.client()
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="_s3latent", Key="peer/object/b/k")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_reads_go_to_the_owner_whose_cache_serves_them(cluster: list[GatewayProcess],
                                                       cbucket: str) -> None:
    owner, other = cluster[2], cluster[1]
    key = _owned_by(cluster, 2, cbucket, "routed/")[0]
    body = os.urandom(50_000)
    other.client().put_object(Bucket=cbucket, Key=key, Body=body, ContentType="image/png")
    before = {n.name: (_metric(n, "s3latent_read_seconds_count", 'path="plain"'),
                       _metric(n, "s3latent_read_seconds_count", 'path="image_hit"'))
              for n in cluster}
    forwarded = _metric(other, "s3latent_cluster_forwarded_total", 'result="ok"')
    s3 = other.client()
    for _ in range(2):
        got = s3.get_object(Bucket=cbucket, Key=key)
        assert got["Body"].read() == body and got["ContentLength"] == len(body)
        assert got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    plain, hits = (_metric(owner, "s3latent_read_seconds_count", 'path="plain"'),
                   _metric(owner, "s3latent_read_seconds_count", 'path="image_hit"'))
    assert (plain, hits) == (before[owner.name][0] + 1, before[owner.name][1] + 1)
    for n in (cluster[0], cluster[1]):  # the others read nothing and hold nothing
        assert (_metric(n, "s3latent_read_seconds_count", 'path="plain"'),
                _metric(n, "s3latent_read_seconds_count", 'path="image_hit"')) == before[n.name]
    assert _metric(other, "s3latent_cluster_forwarded_total", 'result="ok"') == forwarded + 2
    # Ranges, conditionals, HEAD and errors come through intact, with this node's request id.
    part = s3.get_object(Bucket=cbucket, Key=key, Range="bytes=100-199")
    assert part["Body"].read() == body[100:200]
    assert part["ContentRange"] == f"bytes 100-199/{len(body)}"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=cbucket, Key=key, IfNoneMatch=got["ETag"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    head = s3.head_object(Bucket=cbucket, Key=key)
    assert head["ContentLength"] == len(body) and head["ETag"] == got["ETag"]
    missing = _owned_by(cluster, 2, cbucket, "missing/")[0]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=cbucket, Key=missing)
    err = exc.value.response
    assert err["Error"]["Code"] == "NoSuchKey"
    assert err["ResponseMetadata"]["RequestId"] == \
        err["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]


def test_encrypted_reads_forwarded_to_the_owner_still_need_the_key(
        cluster: list[GatewayProcess], cbucket: str) -> None:
    """A forwarded read is served by the owner's handler with the client's SSE-C headers: no
    node serves an SSE-C object without its key, and SSE-S3 works on every node (one key)."""
    owner, other = cluster[2], cluster[1]
    key, key2 = _owned_by(cluster, 2, cbucket, "sse/", count=2)
    secret = base64.b64encode(os.urandom(32)).decode()
    ssec = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": secret,
            "SSECustomerKeyMD5": base64.b64encode(
                hashlib.md5(base64.b64decode(secret)).digest()).decode()}
    body = os.urandom(100_000)
    cluster[0].client().put_object(Bucket=cbucket, Key=key, Body=body, **ssec)
    forwarded = _metric(other, "s3latent_cluster_forwarded_total", 'result="ok"')
    s3 = other.client()
    for _ in range(2):  # the second read could come from a cache: still needs the key
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=cbucket, Key=key)
        assert exc.value.response["Error"]["Code"] == "InvalidRequest"
        got = s3.get_object(Bucket=cbucket, Key=key, **ssec)
        assert got["Body"].read() == body
    assert _metric(other, "s3latent_cluster_forwarded_total", 'result="ok"') > forwarded
    part = s3.get_object(Bucket=cbucket, Key=key, Range="bytes=70000-70009", **ssec)
    assert part["Body"].read() == body[70000:70010]
    cluster[0].client().put_object(Bucket=cbucket, Key=key2, Body=body,
                                   ServerSideEncryption="AES256")
    assert owner.client().get_object(Bucket=cbucket, Key=key2)["Body"].read() == body
    assert s3.get_object(Bucket=cbucket, Key=key2)["Body"].read() == body


def test_a_write_through_another_node_invalidates_the_owner(cluster: list[GatewayProcess],
                                                            cbucket: str) -> None:
    owner, other = cluster[2], cluster[1]
    key = _owned_by(cluster, 2, cbucket, "inval/")[0]
    s3_owner, s3_other = owner.client(), other.client()
    s3_owner.put_object(Bucket=cbucket, Key=key, Body=b"old" * 1000, ContentType="image/png")
    for _ in range(2):  # cached by the owner
        assert s3_owner.get_object(Bucket=cbucket, Key=key)["Body"].read() == b"old" * 1000
    received = _metric(owner, "s3latent_cluster_invalidations_total", 'result="received"')
    s3_other.put_object(Bucket=cbucket, Key=key, Body=b"new" * 1000, ContentType="image/png")
    deadline = time.monotonic() + 2
    while _metric(owner, "s3latent_cluster_invalidations_total",
                  'result="received"') == received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s3_owner.get_object(Bucket=cbucket, Key=key)["Body"].read() == b"new" * 1000
    assert s3_other.get_object(Bucket=cbucket, Key=key)["Body"].read() == b"new" * 1000
    s3_other.delete_object(Bucket=cbucket, Key=key)
    time.sleep(0.3)
    with pytest.raises(ClientError) as exc:
        s3_owner.get_object(Bucket=cbucket, Key=key)
    assert exc.value.response["Error"]["Code"] == "NoSuchKey"


def test_decodes_spill_to_idle_peers_byte_identical(cluster: list[GatewayProcess],
                                                    cbucket: str,
                                                    tiny_model: dict[str, str],  # noqa: F811
                                                    ) -> None:
    spiller = cluster[0]
    keys = _owned_by(cluster, 0, cbucket, "spill/", count=4)
    writer = cluster[1].client()  # conversions run on the node that took the writes
    for i, key in enumerate(keys):
        image, sidecar, _ = make_pair(tiny_model, seed=40 + i)
        writer.put_object(Bucket=cbucket, Key=key, Body=image, ContentType="image/png")
        writer.put_object(Bucket=cbucket, Key=key + ".latent.safetensors", Body=sidecar)
    etags = {k: wait_latent(writer, cbucket, k)["ETag"] for k in keys}
    # Spills go to live peers only: on a loaded machine a health check may have timed out
    # (0.5 s) meanwhile, leaving node 0 alone for a while (failed once so: 0 spilled).
    _wait_members(cluster, 3)
    sent = _metric(spiller, "s3latent_cluster_spilled_decodes_total", 'direction="sent"')
    received = sum(_metric(n, "s3latent_cluster_spilled_decodes_total",
                           'direction="received"') for n in cluster[1:])
    s3 = spiller.client()

    def read(key: str) -> bytes:
        return bytes(s3.get_object(Bucket=cbucket, Key=key)["Body"].read())

    with concurrent.futures.ThreadPoolExecutor(len(keys)) as pool:
        datas = dict(zip(keys, pool.map(read, keys), strict=True))
    for key, data in datas.items():  # the ETag fixed at conversion: byte-identical
        assert f'"{hashlib.md5(data).hexdigest()}"' == etags[key]
    spilled = _metric(spiller, "s3latent_cluster_spilled_decodes_total",
                      'direction="sent"') - sent
    assert spilled >= 1
    assert sum(_metric(n, "s3latent_cluster_spilled_decodes_total", 'direction="received"')
               for n in cluster[1:]) - received == spilled


def test_a_killed_node_costs_clients_nothing(cluster: list[GatewayProcess],
                                             cbucket: str) -> None:
    """Last in the module: it kills node 2."""
    victim, survivors = cluster[2], cluster[:2]
    keys = [f"kill/{i}.png" for i in range(30)]
    s3 = survivors[0].client()
    bodies = {k: os.urandom(2000) + k.encode() for k in keys}
    for k, body in bodies.items():
        s3.put_object(Bucket=cbucket, Key=k, Body=body, ContentType="image/png")
    assert any(ring.owner([n.endpoint for n in cluster], cbucket, k) == victim.endpoint
               for k in keys)
    errors: list[tuple[float, str]] = []
    stop = threading.Event()
    killed_at: list[float] = []

    def loop(node: GatewayProcess) -> None:
        client = node.client(connect_timeout=2, read_timeout=10, max_attempts=1)
        while not stop.is_set():
            for k in keys:
                try:
                    assert client.get_object(Bucket=cbucket, Key=k)["Body"].read() == bodies[k]
                except Exception as exc:  # every failure counts
                    errors.append((time.monotonic(), repr(exc)))

    threads = [threading.Thread(target=loop, args=(n,)) for n in survivors]
    for t in threads:
        t.start()
    time.sleep(0.5)
    victim.kill()
    killed_at.append(time.monotonic())
    _wait_members(survivors, 2, timeout=10)
    noticed = time.monotonic()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    # Forwards to the dead owner fall back to local reads; once the ring has noticed, no
    # request goes there at all. (Only a read streaming from it at the kill can be cut.)
    assert [e for e in errors if e[0] > noticed] == []
    assert len(errors) <= 2, errors[:3]
    for k, body in bodies.items():  # nothing was only on the dead node
        assert survivors[1].client().get_object(Bucket=cbucket, Key=k)["Body"].read() == body


# -- graceful shutdown (no cluster needed) ---------------------------------------------
def test_sigterm_lets_a_slow_put_finish_then_exits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = GatewayProcess(f"file://{data}", tmp_path,
                          config="[server]\nshutdown_grace_s = 8.0\n").start()
    try:
        s3 = node.client()
        s3.create_bucket(Bucket="slow")
        body = os.urandom(400_000)
        url = f"{node.endpoint}/slow/upload.bin"
        request = AWSRequest(method="PUT", url=url, headers={
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "Content-Length": str(len(body))})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=20)
        conn.putrequest("PUT", "/slow/upload.bin", skip_accept_encoding=True)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        pieces = [body[i:i + 40_000] for i in range(0, len(body), 40_000)]
        termed = 0.0
        for i, piece in enumerate(pieces):  # about 3 s in all; SIGTERM after 1 s
            conn.send(piece)
            time.sleep(0.3)
            if i == 3:
                os.kill(node.pid, signal.SIGTERM)
                termed = time.monotonic()
                time.sleep(0.3)
                with pytest.raises(requests.ConnectionError):  # no new connections
                    requests.get(node.endpoint + "/health", timeout=2)
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
        assert answer.getheader("ETag") == f'"{hashlib.md5(body).hexdigest()}"'
        assert node.proc is not None
        node.proc.wait(timeout=8.0 + 5)
        assert time.monotonic() - termed < 8.0 + 5
    finally:
        node.stop()
    again = GatewayProcess(f"file://{data}", tmp_path).start()
    try:
        assert again.client().get_object(Bucket="slow", Key="upload.bin")["Body"].read() == body
    finally:
        again.stop()


async def test_dns_node_entries_resolve_to_every_address(tmp_path: Path) -> None:
    """`dns+http://name:port` (a headless service) stands for each address of the name."""
    from s3latent.cli import build_gateway

    (tmp_path / "c.toml").write_text(
        '[cluster]\nself = "http://127.0.0.1:9000"\nnodes = ["dns+http://localhost:9001", '
        '"http://Peer.Example:9002/"]\n')
    cfg = load_config(tmp_path / "c.toml", env={"S3LATENT_CLUSTER_SECRET": SECRET},
                      backend=f"file://{tmp_path / 'data'}")
    gw = build_gateway(cfg)
    urls = await gw.cluster._resolve()
    assert "http://127.0.0.1:9001" in urls and "http://peer.example:9002" in urls
    assert gw.cluster.live_nodes() == ["http://127.0.0.1:9000"]  # peers join when healthy
