"""Bucket policies actually granting and denying, across three callers.

The owner, another configured user and an anonymous client, each a real client
(boto3, signed or unsigned, and plain urllib) against a gateway process on the local
backend and over SeaweedFS. The policy language is pinned in test_policy_language.py;
here what matters is that the access decision applies it with ACLs as S3 does: an
explicit Deny beats every grant (the owner's own included), an Allow opens what ACLs
keep closed, and the bucket owner can always manage the policy itself.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from s3latent.bench.servers import GatewayServer

REPO = Path(__file__).resolve().parents[1]

OWNER = {"access_key": "policy-owner", "secret_key": "policy-owner-secret-0123",
         "id": hashlib.sha256(b"policy-owner").hexdigest(), "display_name": "olivia"}
OTHER = {"access_key": "policy-other", "secret_key": "policy-other-secret-0123",
         "id": hashlib.sha256(b"policy-other").hexdigest(), "display_name": "oscar"}


def _users_toml() -> str:
    return "".join(
        "[[users]]\n" + "".join(f'{k} = "{v}"\n' for k, v in user.items()) + "\n"
        for user in (OWNER, OTHER))


@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def endpoint(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(f"policy-access-{request.param}")
    if request.param == "local":
        proc = GatewayServer(f"file://{workdir / 'data'}", workdir, access_key=None,
                             config_text=_users_toml())
    else:
        weed = request.getfixturevalue("seaweedfs")
        proc = GatewayServer(weed.endpoint, workdir, access_key=None,
                             backend_keys=(weed.access_key, weed.secret_key),
                             config_text=_users_toml())
    proc.start()
    yield proc.endpoint
    proc.stop()


def _client(endpoint: str, user: dict[str, str] | None) -> Any:
    """boto3 signing as `user`, or sending no signature at all (None: anonymous)."""
    if user is None:
        config = BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                            signature_version=UNSIGNED)
        return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                            config=config)
    config = BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config,
                        aws_access_key_id=user["access_key"],
                        aws_secret_access_key=user["secret_key"])


@pytest.fixture
def owner(endpoint: str) -> Any:
    return _client(endpoint, OWNER)


@pytest.fixture
def other(endpoint: str) -> Any:
    return _client(endpoint, OTHER)


@pytest.fixture
def anon(endpoint: str) -> Any:
    return _client(endpoint, None)


@pytest.fixture
def bucket(owner: Any) -> Iterator[str]:
    name = f"pa-{uuid.uuid4().hex[:12]}"
    owner.create_bucket(Bucket=name)
    yield name
    try:
        owner.delete_bucket_policy(Bucket=name)
        for page in owner.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                owner.delete_object(Bucket=name, Key=obj["Key"])
        owner.delete_bucket(Bucket=name)
    except Exception:  # best-effort cleanup must not hide the test result
        pass


def put_policy(client: Any, bucket: str, *statements: dict[str, Any]) -> None:
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": list(statements)}))


def denied(call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def read(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def plain_get(endpoint: str, bucket: str, key: str) -> tuple[int, bytes]:
    """An unsigned GET as a browser or curl sends it."""
    try:
        with urllib.request.urlopen(f"{endpoint}/{bucket}/{key}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_get_object_granted_to_everyone_on_a_prefix(endpoint: str, owner: Any, other: Any,
                                                    anon: Any, bucket: str) -> None:
    owner.put_object(Bucket=bucket, Key="public/cat.txt", Body=b"meow")
    owner.put_object(Bucket=bucket, Key="private/dog.txt", Body=b"woof")
    # Before any policy: only the owner reads.
    denied(other.get_object, Bucket=bucket, Key="public/cat.txt")
    denied(anon.get_object, Bucket=bucket, Key="public/cat.txt")
    put_policy(owner, bucket, {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                               "Resource": f"arn:aws:s3:::{bucket}/public/*"})
    assert read(anon, bucket, "public/cat.txt") == b"meow"
    assert read(other, bucket, "public/cat.txt") == b"meow"
    assert plain_get(endpoint, bucket, "public/cat.txt") == (200, b"meow")
    # Nothing else opens: other keys, other actions, listing.
    denied(anon.get_object, Bucket=bucket, Key="private/dog.txt")
    denied(other.get_object, Bucket=bucket, Key="private/dog.txt")
    status, body = plain_get(endpoint, bucket, "private/dog.txt")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    denied(anon.put_object, Bucket=bucket, Key="public/new.txt", Body=b"x")
    denied(other.delete_object, Bucket=bucket, Key="public/cat.txt")
    denied(anon.list_objects_v2, Bucket=bucket)
    denied(other.get_bucket_policy, Bucket=bucket)  # reading the policy is not granted
    assert read(owner, bucket, "private/dog.txt") == b"woof"
    # Deleting the policy closes it again.
    owner.delete_bucket_policy(Bucket=bucket)
    denied(anon.get_object, Bucket=bucket, Key="public/cat.txt")


def test_deny_for_one_user_beats_an_acl_grant(owner: Any, other: Any, bucket: str) -> None:
    grant = f'id="{OTHER["id"]}"'
    for key in ("secret/plan.txt", "open/notes.txt"):
        owner.put_object(Bucket=bucket, Key=key, Body=key.encode(), GrantRead=grant)
    assert read(other, bucket, "secret/plan.txt") == b"secret/plan.txt"  # the ACL grants it
    put_policy(owner, bucket, {
        "Effect": "Deny", "Principal": {"AWS": f"arn:aws:iam::000000000000:user/"
                                               f"{OTHER['display_name']}"},
        "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/secret/*"})
    denied(other.get_object, Bucket=bucket, Key="secret/plan.txt")
    assert read(other, bucket, "open/notes.txt") == b"open/notes.txt"
    assert read(owner, bucket, "secret/plan.txt") == b"secret/plan.txt"  # not the owner


def test_deny_to_everyone_binds_the_owner_who_can_still_manage_the_policy(
        owner: Any, bucket: str) -> None:
    owner.put_object(Bucket=bucket, Key="k", Body=b"v")
    put_policy(owner, bucket, {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                               "Resource": [f"arn:aws:s3:::{bucket}",
                                            f"arn:aws:s3:::{bucket}/*"]})
    denied(owner.get_object, Bucket=bucket, Key="k")
    denied(owner.list_objects_v2, Bucket=bucket)
    # The bucket owner is never locked out of its own policy.
    assert "Deny" in owner.get_bucket_policy(Bucket=bucket)["Policy"]
    owner.delete_bucket_policy(Bucket=bucket)
    assert read(owner, bucket, "k") == b"v"


def test_canonical_id_principal_grants_writes(owner: Any, other: Any, bucket: str) -> None:
    denied(other.put_object, Bucket=bucket, Key="up/a", Body=b"a")
    put_policy(owner, bucket, {"Effect": "Allow", "Principal": {"CanonicalUser": OTHER["id"]},
                               "Action": ["s3:PutObject", "s3:GetObject"],
                               "Resource": f"arn:aws:s3:::{bucket}/up/*"})
    other.put_object(Bucket=bucket, Key="up/a", Body=b"a")
    assert read(other, bucket, "up/a") == b"a"
    denied(other.put_object, Bucket=bucket, Key="elsewhere", Body=b"b")


def test_prefix_condition_on_list_bucket(owner: Any, other: Any, anon: Any,
                                        bucket: str) -> None:
    for key in ("public/a", "public/b", "private/c"):
        owner.put_object(Bucket=bucket, Key=key, Body=b"x")
    put_policy(owner, bucket, {"Effect": "Allow", "Principal": {"AWS": OTHER["id"]},
                               "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
                               "Condition": {"StringEquals": {"s3:prefix": "public/"}}})
    listed = other.list_objects_v2(Bucket=bucket, Prefix="public/")
    assert [o["Key"] for o in listed["Contents"]] == ["public/a", "public/b"]
    listed = other.list_objects(Bucket=bucket, Prefix="public/")  # V1 too
    assert [o["Key"] for o in listed["Contents"]] == ["public/a", "public/b"]
    denied(other.list_objects_v2, Bucket=bucket)  # no prefix: the key is missing
    denied(other.list_objects_v2, Bucket=bucket, Prefix="private/")
    denied(other.list_objects_v2, Bucket=bucket, Prefix="public/x")
    denied(anon.list_objects_v2, Bucket=bucket, Prefix="public/")  # not the named user
    denied(other.get_object, Bucket=bucket, Key="public/a")  # listing is not reading


def test_source_ip_condition(endpoint: str, owner: Any, anon: Any, bucket: str) -> None:
    owner.put_object(Bucket=bucket, Key="img.png", Body=b"png")
    statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket}/*",
                 "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}
    put_policy(owner, bucket, statement)
    denied(anon.get_object, Bucket=bucket, Key="img.png")  # the tests come from 127.0.0.1
    statement["Condition"] = {"IpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}}
    put_policy(owner, bucket, statement)
    assert read(anon, bucket, "img.png") == b"png"
    assert plain_get(endpoint, bucket, "img.png") == (200, b"png")
    # A Deny from everywhere but 10/8 beats the Allow: explicit Deny wins inside a policy.
    put_policy(owner, bucket, statement,
               {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
                "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}})
    denied(anon.get_object, Bucket=bucket, Key="img.png")
    denied(owner.get_object, Bucket=bucket, Key="img.png")


def test_other_users_cannot_manage_the_policy(owner: Any, other: Any, bucket: str) -> None:
    text = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*"}]})
    denied(other.put_bucket_policy, Bucket=bucket, Policy=text)
    owner.put_bucket_policy(Bucket=bucket, Policy=text)
    denied(other.get_bucket_policy, Bucket=bucket)
    denied(other.delete_bucket_policy, Bucket=bucket)
    assert owner.get_bucket_policy(Bucket=bucket)["Policy"] == text
