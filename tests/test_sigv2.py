"""SigV2 through the gateway: the presigned URLs boto3 and the AWS CLI make for custom
endpoints, and header-signed requests, cross-checked with botocore's own SigV2 signers."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest
import requests
from botocore.auth import HmacV1Auth, HmacV1QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess

KEYS = ["plain.txt", "sp ace/é+x=y~z%.bin", "a/b/c"]


def _signed(gateway: GatewayProcess, method: str, bucket: str, key: str, *, body: bytes = b"",
            secret: str = SECRET_KEY, query: str = "", expires: int | None = None,
            headers: dict[str, str] | None = None) -> AWSRequest:
    url = f"{gateway.endpoint}/{bucket}/{quote(key, safe='/~')}" + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    creds = Credentials(ACCESS_KEY, secret)
    signer = HmacV1QueryAuth(creds, expires=expires) if expires is not None else HmacV1Auth(creds)
    signer.add_auth(req)
    return req


def _send(req: AWSRequest) -> requests.Response:
    return requests.request(req.method, req.url, data=req.body, headers=dict(req.headers),
                            timeout=10)


@pytest.mark.parametrize("key", KEYS)
def test_header_and_query_signed(gateway: GatewayProcess, s3: Any, bucket: str,
                                 key: str) -> None:
    r = _send(_signed(gateway, "PUT", bucket, key, body=b"v2 body",
                      headers={"Content-Type": "text/plain", "x-amz-meta-a": "1"}))
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v2 body"
    r = _send(_signed(gateway, "GET", bucket, key, expires=60))
    assert r.status_code == 200 and r.content == b"v2 body"
    r = _send(_signed(gateway, "GET", bucket, key, expires=60,
                      query="response-content-type=image%2Fpng"))
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"


def test_default_boto3_presign_is_sigv2_and_works(gateway: GatewayProcess, bucket: str) -> None:
    s3 = gateway.client()
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    assert "AWSAccessKeyId=" in url or "X-Amz-Signature=" in url
    assert requests.get(url, timeout=10).content == b"hello"


def test_bad_sigv2_requests(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    r = _send(_signed(gateway, "PUT", bucket, "x", body=b"1", secret="wrong"))
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
    req = _signed(gateway, "GET", bucket, "x", expires=1)
    time.sleep(1.2)  # Expires is int(now + 1): past it after 1.2 s, whatever the load
    r = _send(req)
    assert r.status_code == 403 and b"Request has expired" in r.content
    req = _signed(gateway, "GET", bucket, "x", expires=60)
    r = requests.get(req.url.replace(f"AWSAccessKeyId={ACCESS_KEY}", "AWSAccessKeyId=NOPE"),
                     timeout=10)
    assert r.status_code == 403 and b"InvalidAccessKeyId" in r.content
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
