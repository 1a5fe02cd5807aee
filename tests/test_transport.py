"""Who a request came from and whether it came encrypted (s3api/transport.py): trusted
proxies' X-Forwarded-For / -Proto for aws:SourceIp and aws:SecureTransport, SSE-C's rule
that a customer key never travels in cleartext, and the gateway's own HTTPS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from botocore.exceptions import ClientError

from s3latent.config import ConfigError, load_config
from s3latent.s3api.transport import Transport, TrustedProxies
from tests.gateway import GatewayProcess, self_signed
from tests.inprocess import InProcessGateway, serve_gateway

KEY = os.urandom(32)
SSEC = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64encode(KEY).decode(),
        "SSECustomerKeyMD5": base64.b64encode(hashlib.md5(KEY).digest()).decode()}


# -- the rule itself ---------------------------------------------------------------------

def _request(peer: str, headers: dict[str, str] | list[tuple[str, str]]) -> Any:
    class _Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return (peer, 40000) if name == "peername" else default

    return make_mocked_request("GET", "/", headers=headers, transport=_Transport())


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    # Not a trusted proxy: the headers are the client's own words, ignored.
    ("203.0.113.9", {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"},
     Transport("203.0.113.9", False)),
    # The balancer: the address it saw, the scheme it says.
    ("10.0.0.5", {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"},
     Transport("198.51.100.7", True)),
    # A client forging the left of the chain is never reached: the nearest untrusted hop.
    ("10.0.0.5", {"X-Forwarded-For": "10.1.2.3, 198.51.100.7"},
     Transport("198.51.100.7", False)),
    # Two trusted balancers in a row.
    ("10.0.0.5", {"X-Forwarded-For": "198.51.100.7, 10.0.0.6"},
     Transport("198.51.100.7", False)),
    # Several header lines count as one list, in order.
    ("10.0.0.5", [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "198.51.100.8")],
     Transport("198.51.100.8", False)),
    # The scheme the nearest proxy appended wins over what the client sent before it.
    ("10.0.0.5", {"X-Forwarded-Proto": "https, http"}, Transport("10.0.0.5", False)),
    # Garbage stops the walk at the last good address; a port or brackets are fine.
    ("10.0.0.5", {"X-Forwarded-For": "not-an-ip, 198.51.100.9:5555"},
     Transport("198.51.100.9", False)),
    ("10.0.0.5", {"X-Forwarded-For": "[2001:db8::1]:443"}, Transport("2001:db8::1", False)),
    ("10.0.0.5", {"X-Forwarded-For": "garbage"}, Transport("10.0.0.5", False)),
])
def test_trusted_proxies(peer: str, headers: Any, expected: Transport) -> None:
    proxies = TrustedProxies(["10.0.0.0/24"])
    assert proxies.of(_request(peer, headers)) == expected


def test_no_trusted_proxies_means_the_socket() -> None:
    request = _request("10.0.0.5", {"X-Forwarded-For": "198.51.100.7",
                                    "X-Forwarded-Proto": "https"})
    assert TrustedProxies().of(request) == Transport("10.0.0.5", False)


def test_config() -> None:
    def load(text: str, tmp: Path) -> Any:
        path = tmp / "c.toml"
        path.write_text(text)
        return load_config(path, env={})

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"transport-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    cfg = load('[server]\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n', tmp)
    assert cfg.trusted_proxies == ["10.0.0.0/8", "::1"]
    assert cfg.encryption.sse_c_require_tls is True
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', tmp)
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load('[server]\ntrusted_proxies = "10.0.0.0/8"\n', tmp)
    with pytest.raises(ConfigError, match="go together"):
        load('[server]\ntls_cert_file = "/x.pem"\n', tmp)


# -- through the gateway -----------------------------------------------------------------

def _policy(bucket: str, condition: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*", "Condition": condition}]})


def _with_headers(s3: Any, headers: dict[str, str]) -> Any:
    def add(params: dict[str, Any], **_: Any) -> None:
        params["headers"].update(headers)
    s3.meta.events.register("before-call.s3.*", add)
    return s3


async def _code(gw: InProcessGateway, fn: Any, client: Any) -> str | None:
    try:
        await gw.run(fn, client)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return None


@pytest.mark.parametrize("trusted", [False, True])
async def test_policies_see_the_client_behind_a_trusted_proxy(tmp_path: Path,
                                                              trusted: bool) -> None:
    config = '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n' if trusted else ""
    async with serve_gateway(tmp_path, config) as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="tpb"))
        await gw.run(lambda s3: s3.put_object(Bucket="tpb", Key="k", Body=b"x"))
        # Reads only from 10.1.0.0/16, and only over TLS.
        await gw.run(lambda s3: s3.put_bucket_policy(Bucket="tpb", Policy=_policy(
            "tpb", {"NotIpAddress": {"aws:SourceIp": "10.1.0.0/16"}})))
        inside = _with_headers(gw.client(), {"X-Forwarded-For": "10.1.2.3"})
        outside = _with_headers(gw.client(), {"X-Forwarded-For": "192.0.2.1"})
        read = lambda s3: s3.get_object(Bucket="tpb", Key="k")["Body"].read()  # noqa: E731
        # Trusted, the balancer's word counts; not trusted, the socket (127.0.0.1) does.
        assert await _code(gw, read, inside) == (None if trusted else "AccessDenied")
        assert await _code(gw, read, outside) == "AccessDenied"

        await gw.run(lambda s3: s3.put_bucket_policy(Bucket="tpb", Policy=_policy(
            "tpb", {"Bool": {"aws:SecureTransport": "false"}})))
        https = _with_headers(gw.client(), {"X-Forwarded-Proto": "https"})
        assert await _code(gw, read, https) == (None if trusted else "AccessDenied")
        assert await _code(gw, read, gw.client()) == "AccessDenied"


async def test_batch_deletes_and_copies_under_a_policy_see_the_client(tmp_path: Path) -> None:
    """DeleteObjects entries and copy sources are judged by the policy as requests of their
    own (access._SourceRequest): they see the same client facts (a 500 once, when they
    lacked them)."""
    async with serve_gateway(tmp_path, '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n') as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="pol"))
        for key in ("a", "b"):
            await gw.run(lambda s3, k=key: s3.put_object(Bucket="pol", Key=k, Body=b"x"))
        deny = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": ["s3:GetObject", "s3:DeleteObject"],
            "Resource": "arn:aws:s3:::pol/*",
            "Condition": {"NotIpAddress": {"aws:SourceIp": "10.1.0.0/16"}}}]})
        await gw.run(lambda s3: s3.put_bucket_policy(Bucket="pol", Policy=deny))
        outside = gw.client()
        inside = _with_headers(gw.client(), {"X-Forwarded-For": "10.1.2.3"})
        copy = lambda s3: s3.copy_object(  # noqa: E731
            Bucket="pol", Key="c", CopySource={"Bucket": "pol", "Key": "a"})
        assert await _code(gw, copy, outside) == "AccessDenied"
        assert await _code(gw, copy, inside) is None
        batch = {"Objects": [{"Key": "a"}, {"Key": "b"}]}
        refused = await gw.run(lambda s3: s3.delete_objects(Bucket="pol", Delete=batch),
                               outside)
        assert [e["Code"] for e in refused["Errors"]] == ["AccessDenied", "AccessDenied"]
        done = await gw.run(lambda s3: s3.delete_objects(Bucket="pol", Delete=batch), inside)
        assert sorted(d["Key"] for d in done["Deleted"]) == ["a", "b"]


async def test_sse_c_in_cleartext_is_refused(tmp_path: Path) -> None:
    async with serve_gateway(tmp_path, '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n') as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="ssec"))
        put = lambda s3: s3.put_object(Bucket="ssec", Key="k", Body=b"secret", **SSEC)  # noqa
        reply = await gw.error(put)
        assert reply["Error"]["Code"] == "InvalidRequest"
        assert reply["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "secure connection" in reply["Error"]["Message"]
        listed = await gw.run(lambda s3: s3.list_objects_v2(Bucket="ssec"))
        assert listed["KeyCount"] == 0  # nothing stored
        # Behind a trusted balancer that says the client used HTTPS: accepted, and read back.
        https = _with_headers(gw.client(), {"X-Forwarded-Proto": "https"})
        await gw.run(put, https)
        body = await gw.run(lambda s3: s3.get_object(Bucket="ssec", Key="k", **SSEC)
                            ["Body"].read(), https)
        assert body == b"secret"
        # The read in cleartext is refused as well (the key would travel in it).
        reply = await gw.error(lambda s3: s3.get_object(Bucket="ssec", Key="k", **SSEC))
        assert reply["Error"]["Code"] == "InvalidRequest"
        # And so is a copy whose source key would.
        reply = await gw.error(lambda s3: s3.copy_object(
            Bucket="ssec", Key="c", CopySource={"Bucket": "ssec", "Key": "k"},
            CopySourceSSECustomerAlgorithm="AES256",
            CopySourceSSECustomerKey=SSEC["SSECustomerKey"],
            CopySourceSSECustomerKeyMD5=SSEC["SSECustomerKeyMD5"]))
        assert reply["Error"]["Code"] == "InvalidRequest"


async def test_sse_c_in_cleartext_when_the_operator_allows_it(tmp_path: Path) -> None:
    async with serve_gateway(tmp_path, "[encryption]\nsse_c_require_tls = false\n") as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="ssec"))
        await gw.run(lambda s3: s3.put_object(Bucket="ssec", Key="k", Body=b"s", **SSEC))
        body = await gw.run(lambda s3: s3.get_object(Bucket="ssec", Key="k", **SSEC)
                            ["Body"].read())
        assert body == b"s"


# -- the gateway's own HTTPS -------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(workdir)
    proc = GatewayProcess(f"file://{workdir / 'data'}", workdir, tls_ca=cert,
                          config=f'[server]\ntls_cert_file = "{cert}"\n'
                                 f'tls_key_file = "{key}"\n')
    proc.start()
    yield proc
    proc.stop()


def test_https_with_sse_c_and_a_secure_transport_policy(tls_gateway: GatewayProcess) -> None:
    s3 = tls_gateway.client()
    assert tls_gateway.endpoint.startswith("https://")
    s3.create_bucket(Bucket="tls")
    s3.put_bucket_policy(Bucket="tls", Policy=_policy(
        "tls", {"Bool": {"aws:SecureTransport": "false"}}))
    s3.put_object(Bucket="tls", Key="k", Body=b"over tls", **SSEC)
    got = s3.get_object(Bucket="tls", Key="k", **SSEC)
    assert got["Body"].read() == b"over tls"
    assert got["SSECustomerKeyMD5"] == SSEC["SSECustomerKeyMD5"]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="tls", Key="k")
    assert err.value.response["Error"]["Code"] == "InvalidRequest"  # the key is needed
