"""The pieces under access control: users in the config, the TTL cache of bucket records,
and who owns a bucket without a recorded owner (docs/access-control.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from s3latent.config import ConfigError, default_user_id, load_config
from s3latent.objects.bucket_records import BucketRecords
from tests.inprocess import serve_gateway
from tests.sigv4_client import ACCESS_KEY


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path, env={})


def test_users_get_ids_names_emails_and_admin(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[[users]]\naccess_key = "a"\nsecret_key = "s"\n'
                '[[users]]\naccess_key = "b"\nsecret_key = "t"\nid = "bee"\n'
                'display_name = "Bee"\nemail = "Bee@Example.com"\nadmin = true\n')
    a, b = cfg.user("a"), cfg.user("b")
    assert (a.id, a.display_name, a.email, a.admin) == (default_user_id("a"), "a", None, False)
    assert len(a.id) == 64 and a.id == default_user_id("a") != default_user_id("b")
    assert (b.id, b.display_name, b.email, b.admin) == ("bee", "Bee", "bee@example.com", True)
    assert cfg.user_by_id("bee") is b and cfg.user_by_email("BEE@example.com") is b
    # The environment's user (no table) gets the defaults too.
    env_cfg = load_config(None, env={"S3LATENT_ACCESS_KEY": "env", "S3LATENT_SECRET_KEY": "x"})
    assert env_cfg.user("env").id == default_user_id("env")


@pytest.mark.parametrize("table, why", [
    ('id = "same"\n', "same id"),
    ('email = "x@y.z"\n', "same email"),
])
def test_users_must_be_distinguishable(tmp_path: Path, table: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        _load(tmp_path, f'[[users]]\naccess_key = "a"\nsecret_key = "s"\n{table}'
                        f'[[users]]\naccess_key = "b"\nsecret_key = "t"\n{table}')


def test_users_refuse_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="admin"):
        _load(tmp_path, '[[users]]\naccess_key = "a"\nsecret_key = "s"\nadmin = "yes"\n')
    with pytest.raises(ConfigError, match="unknown"):
        _load(tmp_path, '[[users]]\naccess_key = "a"\nsecret_key = "s"\nrole = "x"\n')


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_records_are_cached_for_the_ttl_and_local_writes_seen_at_once() -> None:
    stored: dict[tuple[str, str], Any] = {}
    reads: list[tuple[str, str]] = []

    async def read(bucket: str, name: str) -> Any:
        reads.append((bucket, name))
        return stored.get((bucket, name))

    async def write(bucket: str, name: str, value: Any) -> None:
        stored[(bucket, name)] = value

    async def owner(bucket: str) -> str | None:
        reads.append((bucket, ".owner"))
        return "alice"

    clock = _Clock()
    records = BucketRecords(read, write, owner, ttl=1.0, clock=clock)
    assert await records.get("b", "acl") is None
    assert await records.get("b", "acl") is None
    assert await records.owner("b") == "alice" and await records.owner("b") == "alice"
    assert reads == [("b", "acl"), ("b", ".owner")]  # one backend read each
    # Another node writes: seen once the TTL has passed, not before.
    stored[("b", "acl")] = {"v": 1}
    clock.now = 0.9
    assert await records.get("b", "acl") is None
    clock.now = 1.0
    assert await records.get("b", "acl") == {"v": 1}
    # A write here is seen here at once.
    await records.put("b", "acl", {"v": 2})
    assert await records.get("b", "acl") == {"v": 2}
    # A bucket deleted or created here forgets its records.
    stored.clear()
    records.forget("b")
    assert await records.get("b", "acl") is None
    # ttl 0: every read asks.
    records.ttl = 0
    count = len(reads)
    await records.get("b", "acl")
    await records.get("b", "acl")
    assert len(reads) == count + 2


OTHER = ("other-user", "other-user-secret-0123")


async def test_unowned_bucket_is_the_single_users(tmp_path: Path) -> None:
    """A bucket without a recorded owner (made on the backend directly) belongs to the only
    configured user, so a default single-user setup keeps working."""
    async with serve_gateway(tmp_path) as gw:
        await gw.backend.create_bucket("legacy", owner=None)
        await gw.run(lambda s3: s3.put_object(Bucket="legacy", Key="k", Body=b"x"))
        acl = await gw.run(lambda s3: s3.get_bucket_acl(Bucket="legacy"))
        assert acl["Owner"]["ID"] == default_user_id(ACCESS_KEY)
        listed = await gw.run(lambda s3: s3.list_buckets())
        assert "legacy" in [b["Name"] for b in listed["Buckets"]]


async def test_unowned_bucket_with_several_users_is_admins_only(tmp_path: Path) -> None:
    users = (f'[[users]]\naccess_key = "{OTHER[0]}"\nsecret_key = "{OTHER[1]}"\n'
             f'[[users]]\naccess_key = "root"\nsecret_key = "root-secret-0123456"\n'
             'admin = true\n')
    async with serve_gateway(tmp_path, users) as gw:
        await gw.backend.create_bucket("legacy", owner=None)
        for client in (gw.s3, gw.client(access_key=OTHER[0], secret_key=OTHER[1])):
            denied = await gw.error(lambda s3: s3.put_object(Bucket="legacy", Key="k",
                                                             Body=b"x"), client=client)
            assert denied["Error"]["Code"] == "AccessDenied"
        root = gw.client(access_key="root", secret_key="root-secret-0123456")
        await gw.run(lambda s3: s3.put_object(Bucket="legacy", Key="k", Body=b"x"), root)
        acl = await gw.run(lambda s3: s3.get_bucket_acl(Bucket="legacy"), root)
        assert acl["Owner"]["ID"] == "s3latent-unowned"
        # An admin can hand it to a user by ACL.
        await gw.run(lambda s3: s3.put_bucket_acl(
            Bucket="legacy", GrantFullControl=f'id="{default_user_id(ACCESS_KEY)}"'), root)
        await gw.run(lambda s3: s3.put_object(Bucket="legacy", Key="k2", Body=b"y"))
