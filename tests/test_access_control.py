"""Who may do what (issue 13, docs/access-control.md), with real clients on both backends.

Three callers throughout: the bucket's owner, another configured user (bob), and anonymous
(botocore UNSIGNED, i.e. no Authorization at all); an admin user besides. Each canned ACL is
tried on buckets and on objects; then grants, Get*Acl, PublicAccessBlock, `aws s3 cp --acl
public-read` read back with plain unsigned HTTP, and a converted (latent) public image
rendered to an anonymous reader exactly as to a signed one.
"""

from __future__ import annotations

import hashlib
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from s3latent.executables import require_executable
from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess, on_backend
from tests.test_latent_objects import _config as latent_config
from tests.test_latent_objects import make_pair, tiny_model, wait_latent  # noqa: F401

OWNER_ID = "0wner" + "0" * 59
BOB = ("bob-access-key", "bob-secret-key-0123456789", "b0b" + "1" * 61, "bob@example.com")
ROOT = ("root-access-key", "root-secret-key-0123456789")
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


def _users() -> str:
    return (f'[[users]]\naccess_key = "{ACCESS_KEY}"\nsecret_key = "{SECRET_KEY}"\n'
            f'id = "{OWNER_ID}"\ndisplay_name = "Owner Name"\n'
            f'[[users]]\naccess_key = "{BOB[0]}"\nsecret_key = "{BOB[1]}"\n'
            f'id = "{BOB[2]}"\ndisplay_name = "Bob"\nemail = "{BOB[3]}"\n'
            f'[[users]]\naccess_key = "{ROOT[0]}"\nsecret_key = "{ROOT[1]}"\nadmin = true\n')


@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def acl_gateway(request: pytest.FixtureRequest, tiny_model: dict[str, str],  # noqa: F811
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp(f"acl-{request.param}")
    config = _users() + latent_config(tiny_model)
    proc = on_backend(request, workdir, config=config)
    proc.start()
    yield proc
    proc.stop()


def _client(proc: GatewayProcess, keys: tuple[str, str] | None) -> Any:
    cfg = BotoConfig(retries={"max_attempts": 1}, s3={"addressing_style": "path"},
                     **({"signature_version": UNSIGNED} if keys is None else {}))
    return boto3.client("s3", endpoint_url=proc.endpoint, region_name="us-east-1",
                        aws_access_key_id=keys[0] if keys else "x",
                        aws_secret_access_key=keys[1] if keys else "x", config=cfg)


@pytest.fixture(scope="module")
def owner(acl_gateway: GatewayProcess) -> Any:
    return _client(acl_gateway, (ACCESS_KEY, SECRET_KEY))


@pytest.fixture(scope="module")
def bob(acl_gateway: GatewayProcess) -> Any:
    return _client(acl_gateway, BOB[:2])


@pytest.fixture(scope="module")
def root(acl_gateway: GatewayProcess) -> Any:
    return _client(acl_gateway, ROOT)


@pytest.fixture(scope="module")
def anon(acl_gateway: GatewayProcess) -> Any:
    return _client(acl_gateway, None)


def _new_bucket(s3: Any, **kw: Any) -> str:
    name = f"a-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, **kw)
    return name


def _ok(call: Callable[[], Any]) -> bool:
    """True if allowed, False if AccessDenied (403 with an S3 error body); else raise."""
    try:
        call()
        return True
    except ClientError as exc:
        err = exc.response["Error"]
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        if status == 403 and err.get("Code") in ("AccessDenied", "403"):
            return False
        raise


def _denied_xml(proc: GatewayProcess, path: str) -> None:
    """An unsigned GET answered 403 AccessDenied with S3's XML body and a request id."""
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(proc.endpoint + path, timeout=10)
    body = exc.value.read()
    assert exc.value.code == 403
    assert b"<Code>AccessDenied</Code>" in body
    request_id = exc.value.headers["x-amz-request-id"]
    assert request_id and f"<RequestId>{request_id}</RequestId>".encode() in body


def test_owners_are_the_configured_identities(owner: Any, bob: Any, root: Any) -> None:
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="k", Body=b"x")
    listed = owner.list_buckets()
    assert listed["Owner"] == {"ID": OWNER_ID, "DisplayName": "Owner Name"}
    assert name in [b["Name"] for b in listed["Buckets"]]
    # Another user sees only their own buckets, with themselves as owner; an admin sees all.
    theirs = bob.list_buckets()
    assert theirs["Owner"] == {"ID": BOB[2], "DisplayName": "Bob"}
    assert name not in [b["Name"] for b in theirs["Buckets"]]
    assert name in [b["Name"] for b in root.list_buckets()["Buckets"]]
    # The bucket's owner, not the caller (the admin asks here).
    acl = root.get_bucket_acl(Bucket=name)
    assert acl["Owner"] == {"ID": OWNER_ID, "DisplayName": "Owner Name"}
    assert acl["Grants"] == [{"Grantee": {"ID": OWNER_ID, "DisplayName": "Owner Name",
                                          "Type": "CanonicalUser"},
                              "Permission": "FULL_CONTROL"}]
    fetched = root.list_objects_v2(Bucket=name, FetchOwner=True)["Contents"][0]
    assert fetched["Owner"] == {"ID": OWNER_ID, "DisplayName": "Owner Name"}
    assert root.list_objects(Bucket=name)["Contents"][0]["Owner"]["ID"] == OWNER_ID
    assert root.get_object_acl(Bucket=name, Key="k")["Owner"]["ID"] == OWNER_ID


def test_another_users_bucket_is_refused_and_admins_may_do_anything(
        acl_gateway: GatewayProcess, owner: Any, bob: Any, root: Any, anon: Any) -> None:
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="k", Body=b"mine")
    for who in (bob, anon):
        assert not _ok(lambda s3=who: s3.list_objects_v2(Bucket=name))
        assert not _ok(lambda s3=who: s3.get_object(Bucket=name, Key="k"))
        assert not _ok(lambda s3=who: s3.head_object(Bucket=name, Key="k"))
        assert not _ok(lambda s3=who: s3.put_object(Bucket=name, Key="k", Body=b"theirs"))
        assert not _ok(lambda s3=who: s3.delete_object(Bucket=name, Key="k"))
        assert not _ok(lambda s3=who: s3.get_bucket_acl(Bucket=name))
        assert not _ok(lambda s3=who: s3.put_bucket_acl(Bucket=name, ACL="public-read"))
        assert not _ok(lambda s3=who: s3.delete_bucket(Bucket=name))
        assert not _ok(lambda s3=who: s3.copy_object(Bucket=name, Key="c",
                                                     CopySource=f"{name}/k"))
    assert not _ok(lambda: anon.list_buckets())
    _denied_xml(acl_gateway, f"/{name}/k")
    _denied_xml(acl_gateway, f"/{name}")
    assert owner.get_object(Bucket=name, Key="k")["Body"].read() == b"mine"
    # Bob cannot copy the owner's private object into a bucket of his own either.
    mine = _new_bucket(bob)
    assert not _ok(lambda: bob.copy_object(Bucket=mine, Key="c", CopySource=f"{name}/k"))
    root.put_object(Bucket=name, Key="by-admin", Body=b"a")
    assert root.get_object(Bucket=name, Key="k")["Body"].read() == b"mine"
    root.delete_object(Bucket=name, Key="by-admin")
    # A missing bucket is NoSuchBucket to anyone, as on S3.
    with pytest.raises(ClientError) as exc:
        bob.list_objects_v2(Bucket=f"gone-{uuid.uuid4().hex[:8]}")
    assert exc.value.response["Error"]["Code"] == "NoSuchBucket"


# (list, write) for (bob, anonymous), per canned ACL on a bucket.
BUCKET_CANNED = {
    "private": ((False, False), (False, False)),
    "public-read": ((True, False), (True, False)),
    "public-read-write": ((True, True), (True, True)),
    "authenticated-read": ((True, False), (False, False)),
}


@pytest.mark.parametrize("canned", sorted(BUCKET_CANNED))
def test_canned_bucket_acls(owner: Any, bob: Any, anon: Any, canned: str) -> None:
    name = _new_bucket(owner, ACL=canned)
    for who, (may_list, may_write) in zip((bob, anon), BUCKET_CANNED[canned], strict=True):
        assert _ok(lambda s3=who: s3.list_objects_v2(Bucket=name)) == may_list
        assert _ok(lambda s3=who: s3.put_object(Bucket=name, Key="w", Body=b"w")) == may_write
    grants = {(g["Grantee"].get("URI") or g["Grantee"].get("ID"), g["Permission"])
              for g in owner.get_bucket_acl(Bucket=name)["Grants"]}
    expected = {(OWNER_ID, "FULL_CONTROL")}
    if canned in ("public-read", "public-read-write"):
        expected.add((ALL_USERS, "READ"))
    if canned == "public-read-write":
        expected.add((ALL_USERS, "WRITE"))
    if canned == "authenticated-read":
        expected.add((AUTH_USERS, "READ"))
    assert grants == expected
    # Put*Acl changes it: back to private, everyone else is out again.
    owner.put_bucket_acl(Bucket=name, ACL="private")
    assert not _ok(lambda: anon.list_objects_v2(Bucket=name))
    assert not _ok(lambda: bob.list_objects_v2(Bucket=name))


# (bob may read, anonymous may read), per canned ACL on an object in the owner's bucket.
OBJECT_CANNED = {
    "private": (False, False),
    "public-read": (True, True),
    "public-read-write": (True, True),
    "authenticated-read": (True, False),
    "bucket-owner-read": (False, False),
    "bucket-owner-full-control": (False, False),
}


@pytest.mark.parametrize("canned", sorted(OBJECT_CANNED))
def test_canned_object_acls(owner: Any, bob: Any, anon: Any, canned: str) -> None:
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="o", Body=b"object", ACL=canned)
    for who, may_read in zip((bob, anon), OBJECT_CANNED[canned], strict=True):
        assert _ok(lambda s3=who: s3.get_object(Bucket=name, Key="o")) == may_read
        assert _ok(lambda s3=who: s3.head_object(Bucket=name, Key="o")) == may_read
        # An object ACL never opens the bucket: no listing, no write.
        assert not _ok(lambda s3=who: s3.list_objects_v2(Bucket=name))
        assert not _ok(lambda s3=who: s3.put_object(Bucket=name, Key="o", Body=b"x"))
    assert owner.get_object(Bucket=name, Key="o")["Body"].read() == b"object"


def test_objects_written_by_another_user_belong_to_them(owner: Any, bob: Any,
                                                        anon: Any) -> None:
    """In a bucket that lets bob write, his objects are his: the bucket owner reads them only
    when granted (bucket-owner-read / -full-control), but may always delete them."""
    name = _new_bucket(owner, ACL="public-read-write")
    bob.put_object(Bucket=name, Key="granted", Body=b"g", ACL="bucket-owner-read")
    bob.put_object(Bucket=name, Key="private", Body=b"p")
    assert owner.get_object(Bucket=name, Key="granted")["Body"].read() == b"g"
    assert not _ok(lambda: owner.get_object(Bucket=name, Key="private"))
    assert not _ok(lambda: anon.get_object(Bucket=name, Key="private"))
    assert bob.get_object(Bucket=name, Key="private")["Body"].read() == b"p"
    acl = bob.get_object_acl(Bucket=name, Key="granted")
    assert acl["Owner"]["ID"] == BOB[2]
    assert {(g["Grantee"]["ID"], g["Permission"]) for g in acl["Grants"]} == \
        {(BOB[2], "FULL_CONTROL"), (OWNER_ID, "READ")}
    # Listed with the bucket owner's view; deletable by the bucket owner.
    assert {o["Key"] for o in owner.list_objects_v2(Bucket=name)["Contents"]} == \
        {"granted", "private"}
    owner.delete_object(Bucket=name, Key="private")


def test_explicit_grants_and_validation(owner: Any, bob: Any, anon: Any) -> None:
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="by-id", Body=b"1", GrantRead=f'id="{BOB[2]}"')
    owner.put_object(Bucket=name, Key="by-email", Body=b"2",
                     GrantRead=f'emailAddress="{BOB[3]}"')
    owner.put_object(Bucket=name, Key="by-uri", Body=b"3", GrantRead=f'uri="{ALL_USERS}"')
    assert bob.get_object(Bucket=name, Key="by-id")["Body"].read() == b"1"
    assert bob.get_object(Bucket=name, Key="by-email")["Body"].read() == b"2"
    assert not _ok(lambda: anon.get_object(Bucket=name, Key="by-id"))
    assert anon.get_object(Bucket=name, Key="by-uri")["Body"].read() == b"3"
    # Grants are exactly the ones given; the e-mail grant is stored as bob's ID.
    grants = owner.get_object_acl(Bucket=name, Key="by-email")["Grants"]
    assert grants == [{"Grantee": {"ID": BOB[2], "DisplayName": "Bob",
                                   "Type": "CanonicalUser"}, "Permission": "READ"}]
    # READ_ACP lets bob read the ACL, not change it; WRITE_ACP lets him change it.
    owner.put_object_acl(Bucket=name, Key="by-id", GrantReadACP=f'id="{BOB[2]}"')
    assert bob.get_object_acl(Bucket=name, Key="by-id")["Owner"]["ID"] == OWNER_ID
    assert not _ok(lambda: bob.get_object(Bucket=name, Key="by-id"))  # READ replaced
    assert not _ok(lambda: bob.put_object_acl(Bucket=name, Key="by-id", ACL="public-read"))
    # A bucket grant by e-mail.
    owner.put_bucket_acl(Bucket=name, GrantRead=f'emailAddress="{BOB[3]}"')
    assert _ok(lambda: bob.list_objects_v2(Bucket=name))

    def error(call: Callable[[], Any]) -> tuple[int, str]:
        with pytest.raises(ClientError) as exc:
            call()
        return (exc.value.response["ResponseMetadata"]["HTTPStatusCode"],
                exc.value.response["Error"]["Code"])

    assert error(lambda: owner.put_object(Bucket=name, Key="x", Body=b"",
                                          GrantRead='id="nobody-has-this-id"')) == \
        (400, "InvalidArgument")
    assert error(lambda: owner.put_object(Bucket=name, Key="x", Body=b"",
                                          GrantRead='emailAddress="no@where.example"')) == \
        (400, "UnresolvableGrantByEmailAddress")
    assert error(lambda: owner.put_object(Bucket=name, Key="x", Body=b"",
                                          GrantRead='uri="http://example.com/group"')) == \
        (400, "InvalidArgument")
    assert error(lambda: owner.put_object(Bucket=name, Key="x", Body=b"", ACL="public-read",
                                          GrantRead=f'id="{BOB[2]}"')) == \
        (400, "InvalidRequest")
    assert error(lambda: owner.create_bucket(Bucket=f"a-{uuid.uuid4().hex[:10]}",
                                             ACL="no-such-acl")) == (400, "InvalidArgument")
    bad = {"Owner": {"ID": OWNER_ID},
           "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": BOB[2]},
                       "Permission": "EVERYTHING"}]}
    assert error(lambda: owner.put_bucket_acl(Bucket=name, AccessControlPolicy=bad)) == \
        (400, "MalformedACLError")
    with pytest.raises(ClientError):
        owner.head_object(Bucket=name, Key="x")  # none of the refused writes stored it


def test_acl_document_round_trip(owner: Any, bob: Any, anon: Any) -> None:
    """PutObjectAcl with an AccessControlPolicy body; Get answers what is in force."""
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="k", Body=b"doc")
    policy = {"Owner": {"ID": OWNER_ID},
              "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": OWNER_ID},
                          "Permission": "FULL_CONTROL"},
                         {"Grantee": {"Type": "Group", "URI": ALL_USERS},
                          "Permission": "READ"}]}
    owner.put_object_acl(Bucket=name, Key="k", AccessControlPolicy=policy)
    got = owner.get_object_acl(Bucket=name, Key="k")
    assert got["Owner"] == {"ID": OWNER_ID, "DisplayName": "Owner Name"}
    assert [(g["Grantee"].get("URI") or g["Grantee"]["ID"], g["Permission"])
            for g in got["Grants"]] == [(ALL_USERS, "READ"), (OWNER_ID, "FULL_CONTROL")]
    assert anon.get_object(Bucket=name, Key="k")["Body"].read() == b"doc"


def test_an_acl_belongs_to_one_write(owner: Any, anon: Any) -> None:
    """A re-PUT of the same bytes does not inherit the public ACL set on the old write."""
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="k", Body=b"same")
    owner.put_object_acl(Bucket=name, Key="k", ACL="public-read")
    assert anon.get_object(Bucket=name, Key="k")["Body"].read() == b"same"
    owner.put_object(Bucket=name, Key="k", Body=b"same")
    assert not _ok(lambda: anon.get_object(Bucket=name, Key="k"))
    assert [g["Permission"] for g in owner.get_object_acl(Bucket=name, Key="k")["Grants"]] \
        == ["FULL_CONTROL"]
    # A write-time public ACL goes with its write too.
    owner.put_object(Bucket=name, Key="w", Body=b"w", ACL="public-read")
    assert _ok(lambda: anon.get_object(Bucket=name, Key="w"))
    owner.put_object(Bucket=name, Key="w", Body=b"w")
    assert not _ok(lambda: anon.get_object(Bucket=name, Key="w"))
    # A copy gets the copy request's ACL, not its source's.
    owner.put_object(Bucket=name, Key="pub", Body=b"p", ACL="public-read")
    owner.copy_object(Bucket=name, Key="copy", CopySource=f"{name}/pub")
    assert not _ok(lambda: anon.get_object(Bucket=name, Key="copy"))
    owner.copy_object(Bucket=name, Key="copy2", CopySource=f"{name}/pub", ACL="public-read")
    assert anon.get_object(Bucket=name, Key="copy2")["Body"].read() == b"p"


def test_multipart_and_post_object_take_acls(acl_gateway: GatewayProcess, owner: Any,
                                             anon: Any) -> None:
    name = _new_bucket(owner)
    up = owner.create_multipart_upload(Bucket=name, Key="mp", ACL="public-read")
    part = owner.upload_part(Bucket=name, Key="mp", UploadId=up["UploadId"], PartNumber=1,
                             Body=b"m" * 100)
    owner.complete_multipart_upload(Bucket=name, Key="mp", UploadId=up["UploadId"],
                                    MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                "ETag": part["ETag"]}]})
    assert anon.get_object(Bucket=name, Key="mp")["Body"].read() == b"m" * 100
    post = owner.generate_presigned_post(name, "form", Fields={"acl": "public-read"},
                                         Conditions=[{"acl": "public-read"}])
    got = requests.post(post["url"], data=post["fields"], files={"file": b"f"}, timeout=10)
    assert got.status_code == 204, got.text
    assert anon.get_object(Bucket=name, Key="form")["Body"].read() == b"f"
    # An anonymous form upload: refused into a private bucket, taken by a public-write one.
    plain = requests.post(f"{acl_gateway.endpoint}/{name}", data={"key": "anon"},
                          files={"file": b"a"}, timeout=10)
    assert plain.status_code == 403 and b"AccessDenied" in plain.content
    owner.put_bucket_acl(Bucket=name, ACL="public-read-write")
    plain = requests.post(f"{acl_gateway.endpoint}/{name}", data={"key": "anon"},
                          files={"file": b"a"}, timeout=10)
    assert plain.status_code == 204, plain.text
    assert owner.get_object(Bucket=name, Key="anon")["Body"].read() == b"a"


def test_public_access_block(owner: Any, anon: Any) -> None:
    name = _new_bucket(owner)
    owner.put_object(Bucket=name, Key="pub", Body=b"p", ACL="public-read")
    with pytest.raises(ClientError) as exc:
        owner.get_public_access_block(Bucket=name)
    assert exc.value.response["Error"]["Code"] == "NoSuchPublicAccessBlockConfiguration"
    owner.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
        "RestrictPublicBuckets": False})
    got = owner.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert got == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                   "BlockPublicPolicy": False, "RestrictPublicBuckets": False}
    assert not _ok(lambda: anon.get_object(Bucket=name, Key="pub"))  # ignored
    for call in (lambda: owner.put_object(Bucket=name, Key="x", Body=b"", ACL="public-read"),
                 lambda: owner.put_object_acl(Bucket=name, Key="pub", ACL="public-read"),
                 lambda: owner.put_bucket_acl(Bucket=name, ACL="public-read-write")):
        assert not _ok(call)
    owner.put_object(Bucket=name, Key="x", Body=b"", ACL="private")  # not public: fine
    owner.delete_public_access_block(Bucket=name)
    assert anon.get_object(Bucket=name, Key="pub")["Body"].read() == b"p"


AWS = require_executable("aws", "awscli")


def test_aws_cli_public_read_image_and_its_latent_form(
        acl_gateway: GatewayProcess, owner: Any, tiny_model: dict[str, str],  # noqa: F811
        tmp_path: Path) -> None:
    """`aws s3 cp --acl public-read` of a generated image and its latent: read back with
    plain unsigned HTTP (as curl would), before and after conversion, byte for byte the
    signed GET."""
    name = _new_bucket(owner)
    image, sidecar, _ = make_pair(tiny_model, seed=3)
    (tmp_path / "cat.png").write_bytes(image)
    (tmp_path / "cat.png.latent.safetensors").write_bytes(sidecar)
    (tmp_path / "home").mkdir()
    env = acl_gateway.cli_env(tmp_path / "home")
    for file in ("cat.png.latent.safetensors", "cat.png"):
        subprocess.run([AWS, "s3", "cp", "--acl", "public-read", str(tmp_path / file),
                        f"s3://{name}/{file}"], env=env, check=True, capture_output=True,
                       timeout=60)

    def curl(key: str) -> bytes:
        with urllib.request.urlopen(f"{acl_gateway.endpoint}/{name}/{key}", timeout=30) as r:
            assert r.status == 200
            return bytes(r.read())

    wait_latent(owner, name, "cat.png")
    signed = owner.get_object(Bucket=name, Key="cat.png")["Body"].read()
    assert curl("cat.png") == signed
    assert len(signed) == len(image)
    assert curl("cat.png.latent.safetensors") == \
        owner.get_object(Bucket=name, Key="cat.png.latent.safetensors")["Body"].read()
    # The converted image kept its ACL (and a later private re-upload does not).
    grants = owner.get_object_acl(Bucket=name, Key="cat.png")["Grants"]
    assert {(g["Grantee"].get("URI"), g["Permission"]) for g in grants} >= {(ALL_USERS, "READ")}
    head = owner.head_object(Bucket=name, Key="cat.png")
    assert head["ETag"] == f'"{hashlib.md5(signed).hexdigest()}"'
    # PutObjectAcl on the converted image holds for that image, and stops at a re-upload.
    owner.put_object_acl(Bucket=name, Key="cat.png", ACL="private")
    _denied_xml(acl_gateway, f"/{name}/cat.png")
    owner.put_object_acl(Bucket=name, Key="cat.png", ACL="public-read")
    assert curl("cat.png") == signed
    owner.put_object(Bucket=name, Key="cat.png", Body=image, ContentType="image/png")
    _denied_xml(acl_gateway, f"/{name}/cat.png")


def test_a_missing_key_is_not_told_to_who_may_not_list(owner: Any, bob: Any,
                                                       anon: Any) -> None:
    """As on S3: 404 NoSuchKey only for callers allowed to list the bucket, else 403."""
    private = _new_bucket(owner)
    public = _new_bucket(owner, ACL="public-read")
    for who in (bob, anon):
        with pytest.raises(ClientError) as exc:
            who.get_object(Bucket=private, Key="missing")
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as exc:
            who.get_object(Bucket=public, Key="missing")
        assert exc.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        owner.get_object(Bucket=private, Key="missing")
    assert exc.value.response["Error"]["Code"] == "NoSuchKey"
