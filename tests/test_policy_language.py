"""The bucket-policy language (s3latent/s3api/policy.py): validation, evaluation, publicness.

Pure unit tests: no server. What a wrong answer here costs is an object readable by
someone it was never shared with, or a Deny that silently does nothing.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from s3latent.errors import S3Error
from s3latent.s3api.policy import MAX_POLICY_BYTES, AccessRequest, BucketPolicy, Glob

B = "photos"
OBJ = f"arn:aws:s3:::{B}/*"
BKT = f"arn:aws:s3:::{B}"
ALICE = "a" * 64  # canonical IDs as the gateway derives them
BOB = "b" * 64


def doc(*statements: dict[str, Any], version: str | None = "2012-10-17") -> str:
    body: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        body["Version"] = version
    return json.dumps(body)


def stmt(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                            "Resource": OBJ}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def req(action: str = "s3:GetObject", key: str | None = "k", *, who: str | None = "alice",
        ip: str = "192.0.2.10", secure: bool = False, **conditions: Any) -> AccessRequest:
    ids = {"alice": ALICE, "bob": BOB}
    return AccessRequest(action=action, bucket=B, key=key,
                         principal_id=ids.get(who) if who else None, principal_name=who,
                         source_ip=ip, secure_transport=secure,
                         conditions={k.replace("__", ":").replace("_SLASH_", "/"): v
                                     for k, v in conditions.items()})


def policy(*statements: dict[str, Any], version: str | None = "2012-10-17") -> BucketPolicy:
    return BucketPolicy.parse(doc(*statements, version=version), B)


def refused(text: Any, bucket: str = B) -> S3Error:
    with pytest.raises(S3Error) as err:
        BucketPolicy.parse(text, bucket)
    assert err.value.code == "MalformedPolicy" and err.value.status == 400
    return err.value


# -- validation ------------------------------------------------------------------------

def test_accepts_the_usual_shapes() -> None:
    policy(stmt())
    policy(stmt(), version="2008-10-17")
    policy(stmt(), version=None)  # Version may be left out
    BucketPolicy.parse(json.dumps({"Id": "x", "Version": "2012-10-17", "Statement": stmt()}), B)
    policy(stmt(Sid="a", Action=["s3:Get*", "s3:ListBucket"], Resource=[BKT, OBJ],
                Principal={"AWS": ["arn:aws:iam::123456789012:user/alice", ALICE],
                           "CanonicalUser": BOB}),
           stmt(Sid="b", Effect="Deny", Principal=None, NotPrincipal={"AWS": ALICE},
                Action=None, NotAction="s3:Get*", Resource=None, NotResource=OBJ,
                Condition={"StringLikeIfExists": {"aws:Referer": "x*"}}))


@pytest.mark.parametrize("resource", [
    BKT, OBJ, f"{BKT}/public/*", "arn:aws:s3:::*", "arn:aws:s3:::*/*", "arn:aws:s3:::pho*",
    "arn:aws:s3:::ph?tos/a", "*", f"{BKT}/${{aws:username}}/*",
])
def test_resources_that_can_name_this_bucket_are_accepted(resource: str) -> None:
    policy(stmt(Resource=resource))


@pytest.mark.parametrize("resource", [
    "arn:aws:s3:::other", "arn:aws:s3:::other/*", "arn:aws:s3:::photosx/*",
    "arn:aws:s3:::photo", "arn:aws:s3:::pho?/*", "arn:aws:iam::123:user/x", "photos/*", "",
    "arn:aws:s3:::x*/*",
])
def test_resources_outside_the_bucket_are_refused(resource: str) -> None:
    assert refused(doc(stmt(Resource=resource))).message == "Policy has invalid resource"


@pytest.mark.parametrize("text, words", [
    ("{not json", "invalid Json"),
    ("", "invalid Json"),
    ("[]", "invalid Json"),
    ('"a string"', "invalid Json"),
    ('{"Statement": [], "Statement": []}', "duplicate key"),
    ('{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Effect": "Deny"}}',
     "duplicate key"),
    ('{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", '
     '"Resource": "arn:aws:s3:::photos/*", "Condition": {"NumericEquals": '
     '{"s3:max-keys": NaN}}}]}', "invalid Json"),
    ('{"Version": "2012-10-17"}', "Missing required field Statement"),
    ('{"Version": "2012-10-17", "Statement": []}', "Missing required field Statement"),
    ('{"Version": "2012-10-17", "Statement": ["x"]}', "must be an object"),
    ('{"Version": "2012-10-17", "Statement": 5}', "must be an object"),
    ('{"Version": "2012-10-17", "Statement": [null]}', "must be an object"),
])
def test_malformed_documents(text: str, words: str) -> None:
    assert words in refused(text).message


@pytest.mark.parametrize("change, words", [
    ({"Effect": None}, "Missing required field Effect"),
    ({"Effect": "allow"}, "Invalid effect"),
    ({"Effect": "Maybe"}, "Invalid effect"),
    ({"Effect": ["Allow"]}, "Invalid effect"),
    ({"Principal": None}, "Missing required field Principal"),
    ({"NotPrincipal": {"AWS": ALICE}}, "both Principal and NotPrincipal"),
    ({"Principal": None, "NotPrincipal": {"AWS": ALICE}}, "NotPrincipal"),  # with Allow
    ({"Principal": {"AWS": "arn:aws:iam::*:root"}}, "Invalid principal"),
    ({"Principal": {"AWS": "al*ce"}}, "Invalid principal"),
    ({"Principal": {"Martian": "x"}}, "Invalid principal"),
    ({"Principal": {}}, "Invalid principal"),
    ({"Principal": "alice"}, "Invalid principal"),
    ({"Principal": {"AWS": ["a b"]}}, "Invalid principal"),
    ({"Principal": {"AWS": []}}, "non-empty list"),
    ({"Principal": {"AWS": "arn:aws:s3:::photos"}}, "Invalid principal"),
    ({"Action": None}, "Missing required field Action"),
    ({"NotAction": "s3:GetObject"}, "both Action and NotAction"),
    ({"Action": "s3:FlyAway"}, "invalid action"),
    ({"Action": "s3:Fly*"}, "invalid action"),
    ({"Action": "ec2:RunInstances"}, "invalid action"),
    ({"Action": "s3:"}, "invalid action"),
    ({"Action": "GetObject"}, "invalid action"),
    ({"Action": []}, "non-empty list"),
    ({"Action": [1]}, "non-empty list"),
    ({"Action": {"s3": "GetObject"}}, "non-empty list"),
    ({"Resource": None}, "Missing required field Resource"),
    ({"NotResource": OBJ}, "both Resource and NotResource"),
    ({"Resource": [OBJ, 5]}, "non-empty list"),
    ({"Sid": 5}, "Sid must be a string"),
    ({"Colour": "red"}, "invalid field"),
    ({"Condition": "yes"}, "Condition must be an object"),
    ({"Condition": {"StringEquals": "x"}}, "must map keys"),
    ({"Condition": {"StringEquals": {}}}, "must map keys"),
    ({"Condition": {"StringEqualz": {"s3:prefix": "a"}}}, "Invalid Condition type"),
    ({"Condition": {"ForSomeValues:StringEquals": {"s3:prefix": "a"}}},
     "Invalid Condition type"),
    ({"Condition": {"NullIfExists": {"s3:prefix": "true"}}}, "Invalid Condition type"),
    ({"Condition": {"IfExists": {"s3:prefix": "true"}}}, "Invalid Condition type"),
    ({"Condition": {"StringEquals": {"prefix": "a"}}}, "Invalid condition key"),
    ({"Condition": {"StringEquals": {"s3:prefix": []}}}, "no values"),
    ({"Condition": {"StringEquals": {"s3:prefix": {"a": "b"}}}}, "Invalid value"),
    ({"Condition": {"StringEquals": {"s3:prefix": [None]}}}, "Invalid value"),
    ({"Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}}, "Invalid IP"),
    ({"Condition": {"IpAddress": {"aws:SourceIp": "example.com"}}}, "Invalid IP"),
    ({"Condition": {"NumericLessThan": {"s3:max-keys": "ten"}}}, "Invalid number"),
    ({"Condition": {"NumericLessThan": {"s3:max-keys": "inf"}}}, "Invalid number"),
    ({"Condition": {"DateLessThan": {"aws:CurrentTime": "yesterday"}}}, "Invalid date"),
    ({"Condition": {"Bool": {"aws:SecureTransport": "yes"}}}, "true or false"),
    ({"Condition": {"Null": {"s3:prefix": "maybe"}}}, "true or false"),
])
def test_malformed_statements(change: dict[str, Any], words: str) -> None:
    assert words in refused(doc(stmt(**change))).message


@pytest.mark.parametrize("version", ["2020-01-01", "2012-10-18", "", 2012, None, ["2012-10-17"]])
def test_only_the_two_policy_versions_are_accepted(version: Any) -> None:
    body = {"Version": version, "Statement": [stmt()]}
    assert "version" in refused(json.dumps(body)).message


def test_unknown_top_level_fields_and_bad_ids_are_refused() -> None:
    refused(json.dumps({"Version": "2012-10-17", "Statement": [stmt()], "Extra": 1}))
    refused(json.dumps({"Version": "2012-10-17", "Id": 5, "Statement": [stmt()]}))


def test_statement_ids_must_be_unique() -> None:
    assert "unique" in refused(doc(stmt(Sid="s"), stmt(Sid="s"))).message
    policy(stmt(Sid="s"), stmt(Sid="t"), stmt())


def test_non_text_input_is_refused() -> None:
    refused(None)
    refused(b'{"Statement": []}')


def test_size_limit_is_20_kib_of_utf8() -> None:
    base = doc(stmt())
    exact = base[:-1] + " " * (MAX_POLICY_BYTES - len(base)) + "}"
    assert len(exact.encode()) == MAX_POLICY_BYTES
    BucketPolicy.parse(exact, B)
    over = base[:-1] + " " * (MAX_POLICY_BYTES - len(base) + 1) + "}"
    assert "20480" in refused(over).message
    # Counted in bytes: multi-byte characters count for what they weigh.
    sid = "é" * ((MAX_POLICY_BYTES - len(base)) // 2 + 10)
    refused(doc(stmt(Sid=sid)))


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a":', "}")])
def test_deep_nesting_is_refused_not_crashing(opener: str, closer: str) -> None:
    depth = (MAX_POLICY_BYTES - 2) // (len(opener) + len(closer))
    refused(opener * depth + "1" + closer * depth)
    nested = '{"Version": "2012-10-17", "Statement": ' + "[" * 50 + "]" * 50 + "}"
    refused(nested)


def test_huge_statement_lists_are_bounded_by_the_size_limit() -> None:
    many = [stmt(Sid=f"s{i}") for i in range(400)]
    refused(doc(*many))  # over 20 KB
    policy(*many[:100])


# -- evaluation: principals, actions, resources ----------------------------------------

def test_principal_star_matches_everyone_including_anonymous() -> None:
    for principal in ("*", {"AWS": "*"}, {"AWS": ["*"]}, {"CanonicalUser": "*"}):
        p = policy(stmt(Principal=principal))
        assert p.evaluate(req(who=None)) == "Allow"
        assert p.evaluate(req(who="bob")) == "Allow"


@pytest.mark.parametrize("principal", [
    {"AWS": ALICE}, {"CanonicalUser": ALICE}, {"AWS": "arn:aws:iam::123456789012:user/alice"},
    {"AWS": "arn:aws:iam::999:user/team/alice"}, {"AWS": f"arn:aws:iam::{ALICE}:root"},
    {"AWS": ["c" * 64, ALICE]}, {"AWS": "arn:aws:iam::1:role/r", "CanonicalUser": ALICE},
])
def test_named_principals_match_only_that_user(principal: dict[str, Any]) -> None:
    p = policy(stmt(Principal=principal))
    assert p.evaluate(req(who="alice")) == "Allow"
    assert p.evaluate(req(who="bob")) is None
    assert p.evaluate(req(who=None)) is None  # anonymous never matches a named principal


def test_service_principals_never_match_a_user() -> None:
    p = policy(stmt(Principal={"Service": "logging.s3.amazonaws.com"}))
    assert p.evaluate(req(who="alice")) is None and p.evaluate(req(who=None)) is None


def test_not_principal_deny_applies_to_everyone_else() -> None:
    p = policy(stmt(Effect="Deny", Principal=None, NotPrincipal={"AWS": ALICE}))
    assert p.evaluate(req(who="alice")) is None
    assert p.evaluate(req(who="bob")) == "Deny"
    assert p.evaluate(req(who=None)) == "Deny"


@pytest.mark.parametrize("action, hits, misses", [
    ("s3:GetObject", ["s3:GetObject", "S3:getobject"], ["s3:GetObjectAcl", "s3:PutObject"]),
    ("s3:Get*", ["s3:GetObject", "s3:GetObjectTagging"], ["s3:PutObject", "s3:ListBucket"]),
    ("s3:*Object", ["s3:GetObject", "s3:DeleteObject"], ["s3:GetObjectAcl"]),
    ("s3:?etObject", ["s3:GetObject"], ["s3:PutObject"]),
    ("s3:*", ["s3:GetObject", "s3:ListBucket"], []),
    ("*", ["s3:GetObject", "s3:PutBucketPolicy"], []),
])
def test_action_wildcards_case_insensitive(action: str, hits: list[str],
                                           misses: list[str]) -> None:
    p = policy(stmt(Action=action, Resource=["arn:aws:s3:::*", "arn:aws:s3:::*/*"]))
    for a in hits:
        assert p.evaluate(req(a)) == "Allow", a
    for a in misses:
        assert p.evaluate(req(a)) is None, a


def test_not_action_matches_every_other_action() -> None:
    p = policy(stmt(Effect="Deny", NotAction=["s3:GetObject", "s3:List*"], Action=None,
                    Resource=[BKT, OBJ]))
    assert p.evaluate(req("s3:GetObject")) is None
    assert p.evaluate(req("s3:ListBucket", key=None)) is None
    assert p.evaluate(req("s3:PutObject")) == "Deny"
    assert p.evaluate(req("s3:DeleteBucket", key=None)) == "Deny"


def test_resources_with_wildcards() -> None:
    p = policy(stmt(Resource=[f"{BKT}/public/*", f"{BKT}/img-??.png"]))
    assert p.evaluate(req(key="public/a/b/c.png")) == "Allow"  # '*' crosses '/'
    assert p.evaluate(req(key="public/")) == "Allow"
    assert p.evaluate(req(key="img-01.png")) == "Allow"
    assert p.evaluate(req(key="img-1.png")) is None
    assert p.evaluate(req(key="Public/x")) is None  # keys are case-sensitive
    assert p.evaluate(req(key="private/x")) is None
    assert p.evaluate(req("s3:GetObject", key=None)) is None  # bucket ARN is not an object


def test_bucket_arn_and_object_arn_are_distinct() -> None:
    """s3-tests' multipart check: PutObject granted on the bucket ARN grants no object."""
    p = policy(stmt(Action="s3:PutObject", Resource=BKT))
    assert p.evaluate(req("s3:PutObject", key="mpobj")) is None
    p = policy(stmt(Action="s3:PutObject", Resource=f"{BKT}/mpobj"))
    assert p.evaluate(req("s3:PutObject", key="mpobj")) == "Allow"
    assert p.evaluate(req("s3:PutObject", key="mpobj2")) is None


def test_not_resource() -> None:
    p = policy(stmt(Effect="Deny", Action="s3:*", Resource=None,
                    NotResource=f"{BKT}/public/*"))
    assert p.evaluate(req("s3:ListBucket", key=None)) == "Deny"  # the bucket is not in it
    assert p.evaluate(req(key="public/x")) is None
    assert p.evaluate(req(key="secret")) == "Deny"


def test_wildcard_characters_in_keys_are_matched_literally_by_the_subject() -> None:
    p = policy(stmt(Resource=f"{BKT}/a*b"))
    assert p.evaluate(req(key="a*b")) == "Allow"
    assert p.evaluate(req(key="a?x?b")) == "Allow"
    p = policy(stmt(Resource=f"{BKT}/exact"))
    assert p.evaluate(req(key="exac?")) is None


def test_explicit_deny_wins_whatever_the_order() -> None:
    allow = stmt(Resource=OBJ)
    deny = stmt(Effect="Deny", Principal={"AWS": BOB}, Resource=f"{BKT}/secret/*")
    for p in (policy(allow, deny), policy(deny, allow)):
        assert p.evaluate(req(who="bob", key="secret/x")) == "Deny"
        assert p.evaluate(req(who="bob", key="open")) == "Allow"
        assert p.evaluate(req(who="alice", key="secret/x")) == "Allow"


def test_nothing_applies_is_none_not_deny() -> None:
    p = policy(stmt(Principal={"AWS": ALICE}))
    assert p.evaluate(req(who="bob")) is None
    assert p.evaluate(req("s3:PutObject")) is None


# -- evaluation: conditions -------------------------------------------------------------

def cond(condition: dict[str, Any], **kw: Any) -> BucketPolicy:
    return policy(stmt(Condition=condition, Resource=[BKT, OBJ], **kw))


def allows(p: BucketPolicy, r: AccessRequest, now: datetime | None = None) -> bool:
    return p.evaluate(r, now=now) == "Allow"


def test_source_ip_v4_v6_and_mapped_addresses() -> None:
    p = cond({"IpAddress": {"aws:SourceIp": ["192.0.2.0/24", "2001:db8::/32"]}})
    assert allows(p, req(ip="192.0.2.77"))
    assert allows(p, req(ip="::ffff:192.0.2.77"))  # IPv4 seen through a dual-stack socket
    assert allows(p, req(ip="2001:db8::1"))
    assert not allows(p, req(ip="198.51.100.1"))
    assert not allows(p, req(ip="2001:db9::1"))
    assert not allows(p, req(ip="not-an-ip"))
    p = cond({"IpAddress": {"aws:SourceIp": "127.0.0.1"}})  # a bare address is a /32
    assert allows(p, req(ip="127.0.0.1")) and not allows(p, req(ip="127.0.0.2"))
    p = cond({"NotIpAddress": {"aws:SourceIp": "192.0.2.0/24"}})
    assert not allows(p, req(ip="192.0.2.1")) and allows(p, req(ip="10.0.0.1"))


def test_ipv4_mapped_ranges_in_a_policy_cover_the_ipv4_clients() -> None:
    # "::ffff:a.b.c.d" in a policy names the same IPv4 clients as "a.b.c.d": a Deny
    # written that way must deny them, however the listener saw the address.
    for written in ("::ffff:192.0.2.0/120", "::ffff:192.0.2.7", "::ffff:c000:207/128"):
        deny = policy(stmt(Resource=[BKT, OBJ]),
                      stmt(Effect="Deny", Resource=[BKT, OBJ],
                           Condition={"IpAddress": {"aws:SourceIp": written}}))
        for ip in ("192.0.2.7", "::ffff:192.0.2.7"):
            assert deny.evaluate(req(ip=ip)) == "Deny", (written, ip)
        assert deny.evaluate(req(ip="198.51.100.7")) == "Allow"
    only = cond({"NotIpAddress": {"aws:SourceIp": "::ffff:192.0.2.0/120"}})
    assert not allows(only, req(ip="192.0.2.7")) and allows(only, req(ip="198.51.100.7"))
    # A mapped /104 is an IPv4 /8: narrow enough to make an Allow to everyone non-public.
    assert not policy(stmt(Condition={"IpAddress": {"aws:SourceIp": "::ffff:10.0.0.0/104"}})
                      ).is_public()
    # ... and all of the mapped space is all of IPv4: public.
    assert policy(stmt(Condition={"IpAddress": {"aws:SourceIp": "::ffff:0:0/96"}})).is_public()


def test_secure_transport_bool() -> None:
    p = policy(stmt(), stmt(Effect="Deny", Condition={"Bool": {"aws:SecureTransport": False}}))
    assert p.evaluate(req(secure=False)) == "Deny"
    assert p.evaluate(req(secure=True)) == "Allow"
    p = cond({"Bool": {"aws:securetransport": "TRUE"}})  # keys and bools: any case
    assert allows(p, req(secure=True)) and not allows(p, req(secure=False))


def test_string_operators() -> None:
    p = cond({"StringEquals": {"s3:prefix": ["a/", "b/"]}}, Action="s3:ListBucket")
    lst = "s3:ListBucket"
    assert allows(p, req(lst, None, s3__prefix="a/"))
    assert not allows(p, req(lst, None, s3__prefix="A/"))
    assert not allows(p, req(lst, None, s3__prefix="a/x"))
    assert not allows(p, req(lst, None))  # missing key: a positive operator fails
    p = cond({"StringEqualsIgnoreCase": {"s3:prefix": "a/"}}, Action="s3:ListBucket")
    assert allows(p, req(lst, None, s3__prefix="A/"))
    p = cond({"StringLike": {"s3:prefix": ["home/*", "img-?"]}}, Action="s3:ListBucket")
    assert allows(p, req(lst, None, s3__prefix="home/x/y"))
    assert allows(p, req(lst, None, s3__prefix="img-1"))
    assert not allows(p, req(lst, None, s3__prefix="img-12"))
    assert not allows(p, req(lst, None, s3__prefix=""))


def test_negated_operators_pass_on_a_missing_key_as_iam_defines() -> None:
    deny = stmt(Effect="Deny", Condition={"StringNotEquals": {"s3:x-amz-acl": "private"}},
                Action="s3:PutObject")
    p = policy(stmt(Action="s3:PutObject"), deny)
    assert p.evaluate(req("s3:PutObject", **{"s3__x-amz-acl": "private"})) == "Allow"
    assert p.evaluate(req("s3:PutObject", **{"s3__x-amz-acl": "public-read"})) == "Deny"
    assert p.evaluate(req("s3:PutObject")) == "Deny"  # no header: the key is missing
    p = cond({"StringNotLike": {"s3:prefix": "secret*"}})
    assert allows(p, req("s3:GetObject"))
    assert not allows(p, req("s3:GetObject", s3__prefix="secret/1"))


def test_x_amz_acl_deny_as_s3_tests_use_it() -> None:
    p = policy(stmt(Action="s3:PutObject"),
               stmt(Action="s3:PutObject", Effect="Deny",
                    Condition={"StringLike": {"s3:x-amz-acl": "public*"}}))
    assert p.evaluate(req("s3:PutObject", who="bob")) == "Allow"
    assert p.evaluate(req("s3:PutObject", who="bob",
                          **{"s3__x-amz-acl": "public-read"})) == "Deny"


def test_if_exists_passes_a_missing_key_only() -> None:
    p = cond({"StringLikeIfExists": {"aws:Referer": "http://www.example.com/*"}})
    assert allows(p, req())
    assert allows(p, req(aws__Referer="http://www.example.com/index.html"))
    assert not allows(p, req(aws__Referer="http://example.com"))


def test_null_operator() -> None:
    p = cond({"Null": {"s3:x-amz-server-side-encryption": "true"}})
    assert allows(p, req())
    assert not allows(p, req(**{"s3__x-amz-server-side-encryption": "AES256"}))
    p = cond({"Null": {"s3:x-amz-server-side-encryption": False}})
    assert not allows(p, req())
    assert allows(p, req(**{"s3__x-amz-server-side-encryption": "AES256"}))


def test_numeric_operators() -> None:
    def ok(op: str, limit: Any, got: str) -> bool:
        p = cond({op: {"s3:max-keys": limit}}, Action="s3:ListBucket")
        return allows(p, req("s3:ListBucket", None, **{"s3__max-keys": got}))
    assert ok("NumericEquals", 10, "10") and not ok("NumericEquals", "10", "11")
    assert ok("NumericNotEquals", 10, "11") and not ok("NumericNotEquals", 10, "10")
    assert ok("NumericLessThan", 10, "9") and not ok("NumericLessThan", 10, "10")
    assert ok("NumericLessThanEquals", 10, "10") and not ok("NumericLessThanEquals", 10, "11")
    assert ok("NumericGreaterThan", 10, "11") and not ok("NumericGreaterThan", 10, "10")
    assert ok("NumericGreaterThanEquals", "1.5", "1.5")
    assert not ok("NumericLessThan", 10, "lots")  # an unparsable request value fails


def test_date_operators_and_current_time() -> None:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    before = cond({"DateLessThan": {"aws:CurrentTime": "2026-07-01T00:00:00Z"}})
    after = cond({"DateGreaterThan": {"aws:CurrentTime": "2026-07-01T00:00:00Z"}})
    assert allows(before, req(), now) and not allows(after, req(), now)
    epoch = cond({"NumericLessThan": {"aws:EpochTime": int(now.timestamp()) + 1}})
    assert allows(epoch, req(), now)
    equals = cond({"DateEquals": {"aws:CurrentTime": int(now.timestamp())}})
    assert allows(equals, req(), now)
    # Without an explicit time the clock is read: a window around now holds.
    window = cond({"DateGreaterThan": {"aws:CurrentTime": "2000-01-01"},
                   "DateLessThan": {"aws:CurrentTime": "2999-01-01T00:00:00+00:00"}})
    assert allows(window, req())


def test_the_time_keys_cannot_be_supplied_through_the_other_condition_keys() -> None:
    # An expiring grant must expire, and a Deny window must deny, whatever the request's
    # other condition keys (some of which come from client headers) say about the time.
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    until = cond({"DateLessThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}})
    assert not allows(until, req(aws__CurrentTime="2025-01-01T00:00:00Z"), now)
    assert not allows(until, req(**{"AWS__currenttime": "2025-01-01T00:00:00Z"}), now)
    epoch = cond({"NumericLessThan": {"aws:EpochTime": 1767225600}})
    assert not allows(epoch, req(aws__EpochTime="1"), now)
    deny = policy(stmt(Resource=[BKT, OBJ]),
                  stmt(Effect="Deny", Resource=[BKT, OBJ],
                       Condition={"DateGreaterThan": {"aws:CurrentTime": "2026-01-01"}}))
    assert deny.evaluate(req(aws__CurrentTime="2025-01-01T00:00:00Z"), now=now) == "Deny"


def test_all_operators_and_keys_must_hold() -> None:
    p = cond({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
              "StringEquals": {"aws:username": "alice", "s3:prefix": "x"}})
    assert allows(p, req(ip="10.1.2.3", s3__prefix="x"))
    assert not allows(p, req(ip="10.1.2.3", who="bob", s3__prefix="x"))
    assert not allows(p, req(ip="11.1.2.3", s3__prefix="x"))
    assert not allows(p, req(ip="10.1.2.3"))


def test_user_keys_and_anonymous() -> None:
    p = cond({"StringEquals": {"aws:userid": BOB}})
    assert allows(p, req(who="bob")) and not allows(p, req(who="alice"))
    assert not allows(p, req(who=None))
    p = cond({"StringEquals": {"aws:PrincipalType": "Anonymous"}})
    assert allows(p, req(who=None)) and not allows(p, req(who="alice"))
    # The caller's identity keys cannot be supplied through the other condition keys.
    p = cond({"StringEquals": {"aws:userid": BOB}})
    assert not allows(p, req(who=None, aws__userid=BOB))
    assert not allows(p, req(who="alice", aws__userid=BOB))
    p = cond({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    assert not allows(p, req(ip="192.0.2.1", aws__SourceIp="10.9.9.9"))


def test_existing_object_tags() -> None:
    p = cond({"StringEquals": {"s3:ExistingObjectTag/security": "public"}})
    assert p.uses_existing_object_tags
    tag = "s3__ExistingObjectTag_SLASH_security"
    assert allows(p, req(who="bob", **{tag: "public"}))
    assert not allows(p, req(who="bob", **{tag: "private"}))
    assert not allows(p, req(who="bob"))  # no such tag on the object
    assert not policy(stmt()).uses_existing_object_tags
    p2 = cond({"StringEquals": {"s3:RequestObjectTag/team": "a"}}, Action="s3:PutObject")
    assert not p2.uses_existing_object_tags
    assert allows(p2, req("s3:PutObject", **{"s3__RequestObjectTag_SLASH_team": "a"}))


def test_set_operators_on_multivalued_keys() -> None:
    any_of = cond({"ForAnyValue:StringEquals": {"s3:RequestObjectTagKeys": ["a", "b"]}})
    all_of = cond({"ForAllValues:StringEquals": {"s3:RequestObjectTagKeys": ["a", "b"]}})
    keys = "s3__RequestObjectTagKeys"
    assert allows(any_of, req(**{keys: ["a", "z"]}))
    assert not allows(any_of, req(**{keys: ["y", "z"]}))
    assert not allows(any_of, req())  # ForAnyValue: a missing key fails
    assert allows(all_of, req(**{keys: ["a", "b"]}))
    assert not allows(all_of, req(**{keys: ["a", "z"]}))
    assert allows(all_of, req())  # ForAllValues: a missing key passes (as IAM defines)
    none_of = cond({"ForAllValues:StringNotEquals": {"s3:RequestObjectTagKeys": ["x"]}})
    assert allows(none_of, req(**{keys: ["a", "b"]}))
    assert not allows(none_of, req(**{keys: ["a", "x"]}))
    some_not = cond({"ForAnyValue:StringNotEquals": {"s3:RequestObjectTagKeys": ["x"]}})
    assert allows(some_not, req(**{keys: ["x", "b"]}))
    assert not allows(some_not, req(**{keys: ["x"]}))


def test_arn_operators() -> None:
    p = cond({"ArnLike": {"aws:SourceArn": "arn:aws:s3:::logs-*"}})
    assert allows(p, req(aws__SourceArn="arn:aws:s3:::logs-1"))
    assert not allows(p, req(aws__SourceArn="arn:aws:s3:::other"))


def test_arn_wildcards_stay_within_their_component() -> None:
    """IAM compares the six ARN parts one by one: a `*` in the region part must not swallow
    the account, or a condition naming account 111 admits another account's topic."""
    p = cond({"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:111122223333:uploads"}})
    assert allows(p, req(aws__SourceArn="arn:aws:sns:us-east-1:111122223333:uploads"))
    assert not allows(p, req(
        aws__SourceArn="arn:aws:sns:us-east-1:999999999999:x:111122223333:uploads"))
    assert not allows(p, req(aws__SourceArn="arn:aws:sns:eu:west:111122223333:uploads"))
    # The resource part keeps its own colons; a wildcard there may cross them.
    tail = cond({"ArnEquals": {"aws:SourceArn": "arn:aws:logs:eu-west-1:111122223333:*"}})
    assert allows(tail, req(aws__SourceArn="arn:aws:logs:eu-west-1:111122223333:log-group:a:*"))
    assert not allows(tail, req(aws__SourceArn="arn:aws:logs:eu-west-1:444455556666:x"))
    # Fewer than six parts never matches a full ARN pattern.
    assert not allows(p, req(aws__SourceArn="arn:aws:sns:111122223333:uploads"))
    negated = cond({"ArnNotLike": {"aws:SourceArn": "arn:aws:sns:*:111122223333:uploads"}})
    assert allows(negated, req(
        aws__SourceArn="arn:aws:sns:us-east-1:999999999999:x:111122223333:uploads"))


def test_policy_variables_in_2012_10_17_only() -> None:
    res = f"{BKT}/home/${{aws:username}}/*"
    p = policy(stmt(Resource=res, Principal={"AWS": [ALICE, BOB]}))
    assert p.evaluate(req(who="alice", key="home/alice/x")) == "Allow"
    assert p.evaluate(req(who="bob", key="home/alice/x")) is None
    assert p.evaluate(req(who=None, key="home/alice/x")) is None  # unresolved: no match
    old = policy(stmt(Resource=res), version="2008-10-17")  # literal text there
    assert old.evaluate(req(who="alice", key="home/alice/x")) is None
    assert old.evaluate(req(who="alice", key="home/${aws:username}/x")) == "Allow"
    # A variable's value is literal: a user named "*" does not become a wildcard.
    p = policy(stmt(Resource=f"{BKT}/${{aws:username}}"))
    assert p.evaluate(req(who="*", key="anything")) is None
    assert p.evaluate(req(who="*", key="*")) == "Allow"
    # ${*} is a literal asterisk.
    p = policy(stmt(Resource=f"{BKT}/star${{*}}"))
    assert p.evaluate(req(key="star*")) == "Allow"
    assert p.evaluate(req(key="starlight")) is None
    p = cond({"StringLike": {"s3:prefix": "home/${aws:username}/*"}})
    assert allows(p, req(s3__prefix="home/alice/a"))
    assert not allows(p, req(who="bob", s3__prefix="home/alice/a"))


def test_other_condition_keys_come_from_the_request() -> None:
    p = cond({"StringEquals": {"s3:x-amz-grant-full-control": "id=testid"}},
             Action="s3:PutObject")
    assert allows(p, req("s3:PutObject", **{"s3__x-amz-grant-full-control": "id=testid"}))
    assert not allows(p, req("s3:PutObject"))


# -- publicness ------------------------------------------------------------------------

@pytest.mark.parametrize("statement, public", [
    (stmt(), True),
    (stmt(Principal={"AWS": "*"}, Action="s3:ListBucket", Resource=[BKT, OBJ]), True),
    (stmt(Principal={"CanonicalUser": "*"}), True),
    (stmt(Principal={"AWS": ["*", ALICE]}), True),
    (stmt(Principal={"AWS": "arn:aws:iam::s3tenant1:root"}), False),
    (stmt(Principal={"AWS": ALICE}), False),
    (stmt(Effect="Deny"), False),
    (stmt(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/32"}}), False),
    (stmt(Condition={"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "2001:db8::/32"]}}), False),
    (stmt(Condition={"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}), True),
    (stmt(Condition={"IpAddress": {"aws:SourceIp": "0.0.0.0/1"}}), True),
    (stmt(Condition={"IpAddress": {"aws:SourceIp": "::/0"}}), True),
    (stmt(Condition={"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}), True),
    (stmt(Condition={"IpAddressIfExists": {"aws:SourceIp": "10.0.0.0/8"}}), True),
    (stmt(Condition={"StringEquals": {"aws:SourceVpc": "vpc-1"}}), False),
    (stmt(Condition={"StringLike": {"aws:SourceVpc": "vpc-*"}}), True),
    (stmt(Condition={"StringEquals": {"aws:SourceAccount": "${aws:username}"}}), True),
    (stmt(Condition={"StringEquals": {"s3:prefix": "public/"}}), True),
    (stmt(Condition={"Bool": {"aws:SecureTransport": "true"}}), True),
])
def test_is_public_as_aws_judges_it(statement: dict[str, Any], public: bool) -> None:
    assert policy(statement).is_public() is public


def test_one_public_statement_makes_the_policy_public() -> None:
    assert policy(stmt(Principal={"AWS": ALICE}), stmt()).is_public()
    assert not policy(stmt(Principal={"AWS": ALICE}), stmt(Effect="Deny")).is_public()


# -- matching cost ---------------------------------------------------------------------

def test_hostile_wildcard_patterns_match_in_linear_time() -> None:
    """A policy author cannot make every request slow with a backtracking pattern."""
    pattern = f"{BKT}/" + "*a" * 2000 + "*b"
    p = policy(stmt(Resource=pattern))
    key = "a" * 1024
    started = time.perf_counter()
    for _ in range(20):
        assert p.evaluate(req(key=key)) is None
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("pattern, subject, expected", [
    ("", "", True), ("", "a", False), ("*", "", True), ("a*", "a", True), ("*a", "ba", True),
    ("a*a", "a", False), ("a*b*c", "abc", True), ("a*b*c", "acb", False),
    ("?", "", False), ("?*", "x", True), ("*?*", "", False), ("a?c", "a\nc", True),
    ("*ab*ab*", "abab", True), ("*ab*ab*", "aba", False), ("x*yz", "xyzyz", True),
])
def test_glob(pattern: str, subject: str, expected: bool) -> None:
    assert Glob.of(pattern).match(subject) is expected


def test_parse_cached_shares_valid_parses_and_never_caches_refusals() -> None:
    text = doc(stmt())
    assert BucketPolicy.parse_cached(text, B) is BucketPolicy.parse_cached(text, B)
    with pytest.raises(S3Error):
        BucketPolicy.parse_cached(text, "another-bucket")  # parsed for that bucket
    for _ in range(2):
        with pytest.raises(S3Error):
            BucketPolicy.parse_cached("{", B)
