"""Bucket policies: the IAM policy language's core, parsed, validated and evaluated.

A pure module (no I/O): `BucketPolicy.parse` refuses what S3 refuses on PutBucketPolicy
with MalformedPolicy, and `evaluate` answers one request. The access decision point
combines its answer with ACLs and ownership: an explicit "Deny" wins over everything,
"Allow" grants, None means the policy says nothing about the request.

Everything is compiled at parse time (wildcard patterns, CIDR ranges, numbers, dates),
so evaluating a request costs no parsing; wildcard matching is linear in the key, so a
hostile pattern cannot make a request slow. What is supported and refused is written up
in docs/bucket-policy.md.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ..errors import S3Error

MAX_POLICY_BYTES = 20 * 1024  # S3's limit on a bucket policy
VERSIONS = ("2012-10-17", "2008-10-17")
ARN_PREFIX = "arn:aws:s3:::"

Decision = Literal["Allow", "Deny"]


@dataclass(frozen=True)
class AccessRequest:
    """One request as a policy sees it (built by the access decision point)."""

    action: str                    # IAM action, e.g. "s3:GetObject"
    bucket: str
    key: str | None                # None for bucket-level actions
    principal_id: str | None       # caller's canonical user ID; None = anonymous
    principal_name: str | None     # caller's user name, for ARN principals; None = anonymous
    source_ip: str                 # client address as seen by the gateway
    secure_transport: bool
    # Other condition keys ("s3:prefix", "s3:x-amz-acl", "s3:ExistingObjectTag/<k>", ...).
    conditions: Mapping[str, str | list[str]] = field(default_factory=dict)


def malformed(message: str) -> S3Error:
    return S3Error("MalformedPolicy", message)


# -- actions ---------------------------------------------------------------------------

# S3's IAM actions: a policy naming an s3 action that matches none of these is refused,
# as S3 refuses it ("Policy has invalid action"), instead of silently never matching.
S3_ACTIONS = frozenset(a.lower() for a in """
AbortMultipartUpload BypassGovernanceRetention CreateAccessPoint CreateBucket CreateJob
DeleteAccessPoint DeleteAccessPointPolicy DeleteBucket DeleteBucketOwnershipControls
DeleteBucketPolicy DeleteBucketWebsite DeleteJobTagging DeleteObject DeleteObjectTagging
DeleteObjectVersion DeleteObjectVersionTagging DeleteStorageLensConfiguration
DescribeJob GetAccelerateConfiguration GetAccessPoint GetAccessPointPolicy
GetAccessPointPolicyStatus GetAccountPublicAccessBlock GetAnalyticsConfiguration
GetBucketAcl GetBucketCORS GetBucketLocation GetBucketLogging GetBucketNotification
GetBucketObjectLockConfiguration GetBucketOwnershipControls GetBucketPolicy
GetBucketPolicyStatus GetBucketPublicAccessBlock GetBucketRequestPayment GetBucketTagging
GetBucketVersioning GetBucketWebsite GetEncryptionConfiguration
GetIntelligentTieringConfiguration GetInventoryConfiguration GetLifecycleConfiguration
GetMetricsConfiguration GetObject GetObjectAcl GetObjectAttributes GetObjectLegalHold
GetObjectRetention GetObjectTagging GetObjectTorrent GetObjectVersion GetObjectVersionAcl
GetObjectVersionAttributes GetObjectVersionForReplication GetObjectVersionTagging
GetObjectVersionTorrent GetReplicationConfiguration GetStorageLensConfiguration
ListAccessPoints ListAllMyBuckets ListBucket ListBucketMultipartUploads ListBucketVersions
ListJobs ListMultipartUploadParts ListStorageLensConfigurations ObjectOwnerOverrideToBucketOwner
PutAccelerateConfiguration PutAccessPointPolicy PutAccountPublicAccessBlock
PutAnalyticsConfiguration PutBucketAcl PutBucketCORS PutBucketLogging PutBucketNotification
PutBucketObjectLockConfiguration PutBucketOwnershipControls PutBucketPolicy
PutBucketPublicAccessBlock PutBucketRequestPayment PutBucketTagging PutBucketVersioning
PutBucketWebsite PutEncryptionConfiguration PutIntelligentTieringConfiguration
PutInventoryConfiguration PutLifecycleConfiguration PutMetricsConfiguration PutObject
PutObjectAcl PutObjectLegalHold PutObjectRetention PutObjectTagging PutObjectVersionAcl
PutObjectVersionTagging PutReplicationConfiguration PutStorageLensConfiguration
ReplicateDelete ReplicateObject ReplicateTags RestoreObject UpdateJobPriority
UpdateJobStatus
""".split())


# -- wildcards ---------------------------------------------------------------------------

_STAR, _QMARK = object(), object()  # wildcard tokens (a literal '*' is the string "*")


class Glob:
    """A pattern with `*` (any run, '/' included) and `?` (one character).

    Matched piece by piece, leftmost first: the pieces between stars have fixed
    lengths, so the first place a piece fits is never worse than a later one. That
    keeps matching linear-ish in the subject whatever the pattern, unlike a regex
    with backtracking.
    """

    def __init__(self, tokens: list[Any], *, ignore_case: bool = False) -> None:
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        pieces: list[list[Any]] = [[]]
        for tok in tokens:
            if tok is _STAR:
                pieces.append([])
            else:
                pieces[-1].append(tok)
        self.tokens = tokens
        self.has_star = len(pieces) > 1
        self.has_wildcard = self.has_star or any(t is _QMARK for t in tokens)
        self.pieces = [re.compile("".join("." if t is _QMARK else re.escape(t) for t in p),
                                  flags) for p in pieces]
        self.lengths = [len(p) for p in pieces]

    @classmethod
    def of(cls, text: str, *, ignore_case: bool = False) -> Glob:
        return cls([_STAR if c == "*" else _QMARK if c == "?" else c for c in text],
                   ignore_case=ignore_case)

    def match(self, subject: str) -> bool:
        first, last = self.pieces[0], self.pieces[-1]
        if not self.has_star:
            return first.fullmatch(subject) is not None
        if first.match(subject) is None:
            return False
        pos = self.lengths[0]
        end = len(subject) - self.lengths[-1]
        if end < pos or last.fullmatch(subject, end) is None:
            return False
        for piece in self.pieces[1:-1]:
            found = piece.search(subject, pos, end)
            if found is None:
                return False
            pos = found.end()
        return True

    def can_match_after(self, prefix: str) -> bool:
        """Whether some string starting with `prefix` matches (resource validation)."""
        states = {0}  # positions in the token list reachable after the prefix so far
        tokens = self.tokens
        for ch in prefix:
            nxt: set[int] = set()
            for i in _close(tokens, states):
                if i < len(tokens):
                    tok = tokens[i]
                    if tok is _STAR:
                        nxt.add(i)
                    elif tok is _QMARK or tok == ch:
                        nxt.add(i + 1)
            if not nxt:
                return False
            states = nxt
        return True


class ArnPattern:
    """An ARN pattern matched component by component, as IAM's Arn* operators do.

    The six colon-separated parts (`arn:partition:service:region:account:resource`) are
    compared one by one, so a `*` in the region never swallows the account: without this,
    `arn:aws:sns:*:111:topic` would also match another account's ARN that merely ends in
    `:111:topic`. The resource part keeps any further colons, and a wildcard there may
    match them, as in IAM.
    """

    _PARTS = 6

    def __init__(self, tokens: list[Any], *, ignore_case: bool = False) -> None:
        parts: list[list[Any]] = [[]]
        for tok in tokens:
            if tok == ":" and len(parts) < self._PARTS:
                parts.append([])
            else:
                parts[-1].append(tok)
        self.parts = [Glob(p, ignore_case=ignore_case) for p in parts]

    def match(self, subject: str) -> bool:
        pieces = subject.split(":", self._PARTS - 1)
        return len(pieces) == len(self.parts) and all(
            g.match(s) for g, s in zip(self.parts, pieces, strict=True))


def _close(tokens: list[Any], states: set[int]) -> set[int]:
    """States plus those reached by letting a star match nothing."""
    out = set(states)
    todo = list(states)
    while todo:
        i = todo.pop()
        if i < len(tokens) and tokens[i] is _STAR and i + 1 not in out:
            out.add(i + 1)
            todo.append(i + 1)
    return out


# -- policy variables ------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def _expand(text: str, lookup: Callable[[str], Any] | None) -> list[Any] | None:
    """Tokens of `text` with ${...} variables replaced; None when one has no value.

    `lookup` None: variables are not in the language (Version 2008-10-17), kept as text.
    """
    tokens: list[Any] = []

    def literal(s: str) -> None:
        tokens.extend(_STAR if c == "*" else _QMARK if c == "?" else c for c in s)

    if lookup is None or "${" not in text:
        literal(text)
        return tokens
    pos = 0
    for m in _VARIABLE.finditer(text):
        literal(text[pos:m.start()])
        name = m.group(1)
        if name in ("*", "?", "$"):
            tokens.append(name)  # an escaped literal character, never a wildcard
        else:
            value = lookup(name)
            if not isinstance(value, str):
                return None
            tokens.extend(value)  # a variable's value is literal text
        pos = m.end()
    literal(text[pos:])
    return tokens


# -- conditions --------------------------------------------------------------------------

_STRING_OPS = {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase",
               "StringNotEqualsIgnoreCase", "StringLike", "StringNotLike"}
_NUMERIC_OPS = {"NumericEquals", "NumericNotEquals", "NumericLessThan",
                "NumericLessThanEquals", "NumericGreaterThan", "NumericGreaterThanEquals"}
_DATE_OPS = {"DateEquals", "DateNotEquals", "DateLessThan", "DateLessThanEquals",
             "DateGreaterThan", "DateGreaterThanEquals"}
_ARN_OPS = {"ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"}
_OTHER_OPS = {"Bool", "BinaryEquals", "IpAddress", "NotIpAddress"}
BASE_OPERATORS = _STRING_OPS | _NUMERIC_OPS | _DATE_OPS | _ARN_OPS | _OTHER_OPS | {"Null"}

_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NumericNotEquals",
            "DateNotEquals", "ArnNotEquals", "ArnNotLike", "NotIpAddress"}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "Equals": lambda a, b: a == b, "NotEquals": lambda a, b: a == b,
    "LessThan": lambda a, b: a < b, "LessThanEquals": lambda a, b: a <= b,
    "GreaterThan": lambda a, b: a > b, "GreaterThanEquals": lambda a, b: a >= b,
}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _date(text: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 date/time or an epoch number."""
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR range; one inside ::ffff:0:0/96 as the IPv4 range it names.

    Client addresses are compared in their IPv4 form (`_address`), so a range written in
    the mapped form would otherwise never match, and a Deny on it would deny nobody.
    """
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    return addr


def _no_lookup(name: str) -> None:
    return None


class Condition:
    """One operator on one key with its values, compiled: `holds(request values)`."""

    def __init__(self, operator: str, key: str, values: list[str], variables: bool) -> None:
        self.operator = operator
        self.key = key
        self.values = values
        qualifier, _, rest = operator.rpartition(":")
        if qualifier not in ("", "ForAnyValue", "ForAllValues"):
            raise malformed(f"Invalid Condition type : {operator}")
        self.set_op = qualifier
        self.if_exists = rest.endswith("IfExists") and rest != "IfExists"
        base = rest[: -len("IfExists")] if self.if_exists else rest
        if base not in BASE_OPERATORS or (base == "Null" and (self.if_exists or qualifier)):
            raise malformed(f"Invalid Condition type : {operator}")
        self.base = base
        self.negated = base in _NEGATED
        self.variables = variables
        if not values:
            raise malformed(f"Condition {operator} on {key} has no values")
        self._prepared = [self._prepare(v) for v in values]
        # Patterns without variables are the same for every request: compiled once.
        self._fixed: dict[str, Glob | ArnPattern | None] = {}
        if base in _STRING_OPS or base in _ARN_OPS or base == "BinaryEquals":
            self._fixed = {v: self._pattern(v, _no_lookup) for v in values
                           if not (variables and "${" in v)}

    def _prepare(self, value: str) -> Any:
        base = self.base
        if base in _NUMERIC_OPS:
            number = _number(value)
            if number is None:
                raise malformed(f"Invalid number in {self.operator}: {value!r}")
            return number
        if base in _DATE_OPS:
            date = _date(value)
            if date is None:
                raise malformed(f"Invalid date in {self.operator}: {value!r}")
            return date
        if base in ("IpAddress", "NotIpAddress"):
            net = _network(value)
            if net is None:
                raise malformed(f"Invalid IP address or CIDR in {self.operator}: {value!r}")
            return net
        if base in ("Bool", "Null"):
            if value.lower() not in ("true", "false"):
                raise malformed(f"{base} conditions take true or false, not {value!r}")
            return value.lower() == "true"
        return value

    def _pattern(self, value: str,
                 lookup: Callable[[str], Any]) -> Glob | ArnPattern | None:
        if value in self._fixed:
            return self._fixed[value]
        tokens = _expand(value, lookup if self.variables else None)
        if tokens is None:
            return None
        if self.base not in ("StringLike", "StringNotLike") and self.base not in _ARN_OPS:
            tokens = ["*" if t is _STAR else "?" if t is _QMARK else t for t in tokens]
        if self.base in _ARN_OPS:
            return ArnPattern(tokens)
        return Glob(tokens, ignore_case="IgnoreCase" in self.base)

    def _matches(self, actual: str, lookup: Callable[[str], Any]) -> bool:
        """Whether one request value matches any policy value (the positive form)."""
        base = self.base
        if base in _NUMERIC_OPS or base in _DATE_OPS:
            got = _number(actual) if base in _NUMERIC_OPS else _date(actual)
            if got is None:
                return False
            compare = _COMPARE[base.removeprefix("Numeric").removeprefix("Date")]
            return any(compare(got, want) for want in self._prepared)
        if base in ("IpAddress", "NotIpAddress"):
            addr = _address(actual)
            return addr is not None and any(addr.version == net.version and addr in net
                                            for net in self._prepared)
        if base == "Bool":
            return any(actual.lower() == ("true" if want else "false")
                       for want in self._prepared)
        for value in self._prepared:
            pattern = self._pattern(value, lookup)
            if pattern is not None and pattern.match(actual):
                return True
        return False

    def holds(self, actual: list[str] | None, lookup: Callable[[str], Any]) -> bool:
        """IAM's rules: values of one key OR, a missing key fails a positive operator
        and passes a negated one; IfExists passes a missing key; ForAllValues passes
        a missing key, ForAnyValue fails it."""
        if self.base == "Null":
            return (actual is None) in self._prepared
        if actual is None:
            if self.if_exists:
                return True
            if self.set_op == "ForAllValues":
                return True
            if self.set_op == "ForAnyValue":
                return False
            return self.negated
        hits = [self._matches(a, lookup) for a in actual]
        if self.set_op == "ForAllValues":
            return all(not h for h in hits) if self.negated else all(hits)
        if self.set_op == "ForAnyValue":
            return any(not h for h in hits) if self.negated else any(hits)
        return not any(hits) if self.negated else any(hits)


# -- principals --------------------------------------------------------------------------

_USER_ARN = re.compile(r"arn:aws:iam::[^:]*:user/(?:.*/)?([^/]+)")
_ROOT_ARN = re.compile(r"arn:aws:iam::([^:]+):root")


@dataclass(frozen=True)
class Principals:
    """The principals a statement names: everyone, or canonical IDs and user names."""

    everyone: bool
    ids: frozenset[str]
    names: frozenset[str]
    public: bool  # names everyone or a wildcard (GetBucketPolicyStatus)

    def match(self, req: AccessRequest) -> bool:
        if self.everyone:
            return True
        if req.principal_id is None:
            return False
        return req.principal_id in self.ids or (req.principal_name is not None
                                                and req.principal_name in self.names)


def _parse_principal(value: Any, element: str) -> Principals:
    if value == "*":
        return Principals(True, frozenset(), frozenset(), True)
    if not isinstance(value, dict) or not value:
        raise malformed(f"Invalid principal in policy: {element} must be \"*\" or an object")
    everyone, public = False, False
    ids: set[str] = set()
    names: set[str] = set()
    for kind, raw in value.items():
        if kind not in ("AWS", "CanonicalUser", "Service", "Federated"):
            raise malformed(f"Invalid principal in policy: unknown principal type {kind!r}")
        for item in _strings(raw, f"{element}.{kind}"):
            if not item or any(c.isspace() for c in item):
                raise malformed(f"Invalid principal in policy: {item!r}")
            if item == "*":
                if kind in ("AWS", "CanonicalUser"):
                    everyone = public = True
                continue
            if kind in ("Service", "Federated"):
                continue  # never a gateway user: named, valid, matches no request
            if "*" in item or "?" in item:  # S3 refuses wildcards in principals but "*"
                raise malformed(f"Invalid principal in policy: {item!r}")
            if kind == "CanonicalUser":
                ids.add(item)
            elif (m := _USER_ARN.fullmatch(item)) is not None:
                names.add(m.group(1))
            elif (m := _ROOT_ARN.fullmatch(item)) is not None:
                ids.add(m.group(1))
            elif item.startswith("arn:"):
                if not item.startswith(("arn:aws:iam::", "arn:aws:sts::")):
                    raise malformed(f"Invalid principal in policy: {item!r}")
                # roles, assumed roles: valid IAM, never a gateway user
            else:
                ids.add(item)  # a canonical user ID or an account ID
    return Principals(everyone, frozenset(ids), frozenset(names), public)


# -- statements --------------------------------------------------------------------------

_STATEMENT_FIELDS = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction",
                     "Resource", "NotResource", "Condition"}
_TOP_FIELDS = {"Version", "Id", "Statement"}


def _strings(value: Any, element: str) -> list[str]:
    """A string or a non-empty list of strings (IAM's "one or many")."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise malformed(f"{element} must be a string or a non-empty list of strings")


def _condition_values(value: Any, where: str) -> list[str]:
    """Condition values: strings, numbers and booleans, one or a list."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, (int, float)):
            out.append(str(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise malformed(f"Invalid value in condition {where}")
    return out


def _check_action(action: str) -> Glob:
    if action == "*":
        return Glob.of("*")
    service, sep, name = action.partition(":")
    if not sep or service.lower() != "s3" or not name:
        raise malformed(f"Policy has invalid action: {action!r}")
    pattern = Glob.of(action, ignore_case=True)
    if not any(pattern.match("s3:" + known) for known in S3_ACTIONS):
        raise malformed(f"Policy has invalid action: {action!r}")
    return pattern


def _check_resource(resource: str, bucket: str) -> str:
    if resource != "*" and not resource.startswith(ARN_PREFIX):
        raise malformed("Policy has invalid resource")
    pattern = Glob.of(resource)
    bucket_arn = ARN_PREFIX + bucket
    if not (pattern.match(bucket_arn) or pattern.can_match_after(bucket_arn + "/")):
        raise malformed("Policy has invalid resource")
    return resource


class Statement:
    """One statement, validated and compiled."""

    def __init__(self, raw: Any, bucket: str, variables: bool) -> None:
        if not isinstance(raw, dict):
            raise malformed("Each Statement must be an object")
        unknown = set(raw) - _STATEMENT_FIELDS
        if unknown:
            raise malformed(f"Policy has an invalid field: {sorted(unknown)[0]}")
        sid = raw.get("Sid")
        if sid is not None and not isinstance(sid, str):
            raise malformed("Sid must be a string")
        self.sid = sid
        if "Effect" not in raw:
            raise malformed("Missing required field Effect")
        if raw["Effect"] not in ("Allow", "Deny"):
            raise malformed(f"Invalid effect: {raw['Effect']!r}")
        self.effect: Decision = raw["Effect"]
        self.variables = variables

        self.not_principal = "NotPrincipal" in raw
        if ("Principal" in raw) == self.not_principal:
            raise malformed("Missing required field Principal" if not self.not_principal
                            else "Statement may not have both Principal and NotPrincipal")
        if self.not_principal and self.effect == "Allow":
            raise malformed("NotPrincipal is only allowed with Effect Deny")
        self.principals = _parse_principal(raw.get("NotPrincipal", raw.get("Principal")),
                                           "NotPrincipal" if self.not_principal
                                           else "Principal")

        self.not_action = "NotAction" in raw
        if ("Action" in raw) == self.not_action:
            raise malformed("Missing required field Action" if not self.not_action
                            else "Statement may not have both Action and NotAction")
        element = "NotAction" if self.not_action else "Action"
        self.actions = [_check_action(a) for a in _strings(raw[element], element)]

        self.not_resource = "NotResource" in raw
        if ("Resource" in raw) == self.not_resource:
            raise malformed("Missing required field Resource" if not self.not_resource
                            else "Statement may not have both Resource and NotResource")
        element = "NotResource" if self.not_resource else "Resource"
        self.resources = [_check_resource(r, bucket) for r in _strings(raw[element], element)]
        self._fixed_resources = {r: Glob.of(r) for r in self.resources
                                 if not (variables and "${" in r)}

        self.conditions: list[Condition] = []
        cond = raw.get("Condition")
        if cond is not None:
            if not isinstance(cond, dict):
                raise malformed("Condition must be an object")
            for operator, block in cond.items():
                if not isinstance(block, dict) or not block:
                    raise malformed(f"Condition {operator} must map keys to values")
                for key, values in block.items():
                    if ":" not in key or any(c.isspace() for c in key):
                        raise malformed(f"Invalid condition key: {key!r}")
                    self.conditions.append(Condition(
                        operator, key, _condition_values(values, f"{operator}/{key}"),
                        variables))

    def applies(self, req: AccessRequest, arn: str, context: _Context) -> bool:
        if self.principals.match(req) == self.not_principal:
            return False
        action_hit = any(p.match(req.action) for p in self.actions)
        if action_hit == self.not_action:
            return False
        resource_hit = any(self._resource_matches(r, arn, context) for r in self.resources)
        if resource_hit == self.not_resource:
            return False
        return all(c.holds(context.values(c.key), context.lookup) for c in self.conditions)

    def _resource_matches(self, resource: str, arn: str, context: _Context) -> bool:
        fixed = self._fixed_resources.get(resource)
        if fixed is not None:
            return fixed.match(arn)
        tokens = _expand(resource, context.lookup)
        return tokens is not None and Glob(tokens).match(arn)

    def is_public(self) -> bool:
        """An Allow to everyone that no fixed-value condition narrows (AWS's rule)."""
        if self.effect != "Allow" or self.not_principal or not self.principals.public:
            return False
        return not any(_narrows(c) for c in self.conditions)


# Keys that narrow a statement to known callers when given fixed values (AWS's list).
_NARROWING_KEYS = {"aws:sourceip", "aws:sourcearn", "aws:sourcevpc", "aws:sourcevpce",
                   "aws:sourceowner", "aws:sourceaccount", "aws:userid", "aws:principalarn",
                   "aws:principalaccount", "aws:principalorgid", "aws:sourceorgid",
                   "s3:dataaccesspointarn", "s3:dataaccesspointaccount"}


def _narrows(cond: Condition) -> bool:
    if cond.key.lower() not in _NARROWING_KEYS or cond.negated or cond.if_exists:
        return False
    if cond.set_op == "ForAllValues":
        return False
    if cond.base == "IpAddress":
        return all(net.prefixlen >= (8 if net.version == 4 else 32) for net in cond._prepared)
    if cond.base not in ("StringEquals", "StringEqualsIgnoreCase", "StringLike",
                         "ArnEquals", "ArnLike"):
        return False
    return all("*" not in v and "?" not in v and "${" not in v for v in cond.values)


# -- the request context -----------------------------------------------------------------

class _Context:
    """Condition key values of one request, looked up case-insensitively as IAM does."""

    def __init__(self, req: AccessRequest, now: datetime) -> None:
        values: dict[str, list[str]] = {}
        for name, value in req.conditions.items():
            values[name.lower()] = [value] if isinstance(value, str) else list(value)
        # Keys about the caller and the connection come from the request's own fields,
        # never from `conditions` (which may carry client-supplied header values).
        # The clock is the gateway's too: a client must not make an expired grant live
        # again, or step outside a Deny window, by naming the time itself.
        for own in ("aws:userid", "aws:username", "aws:principaltype"):
            values.pop(own, None)
        values["aws:sourceip"] = [req.source_ip]
        values["aws:securetransport"] = ["true" if req.secure_transport else "false"]
        values["aws:currenttime"] = [now.strftime("%Y-%m-%dT%H:%M:%SZ")]
        values["aws:epochtime"] = [str(int(now.timestamp()))]
        if req.principal_id is not None:
            values["aws:userid"] = [req.principal_id]
            values["aws:principaltype"] = ["User"]
        else:
            values["aws:principaltype"] = ["Anonymous"]
        if req.principal_name is not None:
            values["aws:username"] = [req.principal_name]
        self._values = values

    def values(self, key: str) -> list[str] | None:
        return self._values.get(key.lower())

    def lookup(self, name: str) -> str | None:
        """A policy variable's value: single-valued keys only."""
        found = self._values.get(name.lower())
        return found[0] if found is not None and len(found) == 1 else None


# -- the policy --------------------------------------------------------------------------

def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise malformed(f"Policy has duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise malformed(f"This policy contains invalid Json ({name})")


class BucketPolicy:
    """A parsed bucket policy: `evaluate` per request, `is_public` for status and blocks."""

    def __init__(self, statements: list[Statement], version: str) -> None:
        self.statements = statements
        self.version = version
        self.uses_existing_object_tags = any(
            c.key.lower().startswith("s3:existingobjecttag/")
            for s in statements for c in s.conditions)

    @classmethod
    def parse(cls, text: str, bucket: str) -> BucketPolicy:
        """Validate a policy for `bucket` as S3 does on PutBucketPolicy."""
        if not isinstance(text, str):
            raise malformed("This policy contains invalid Json")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
            raise malformed(f"Policies must be no larger than {MAX_POLICY_BYTES} bytes")
        try:
            doc = json.loads(text, object_pairs_hook=_reject_duplicates,
                             parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, S3Error):
                raise
            raise malformed("This policy contains invalid Json") from exc
        if not isinstance(doc, dict):
            raise malformed("This policy contains invalid Json: expected an object")
        unknown = set(doc) - _TOP_FIELDS
        if unknown:
            raise malformed(f"Policy has an invalid field: {sorted(unknown)[0]}")
        version = doc.get("Version", "2008-10-17")
        if version not in VERSIONS:
            raise malformed(f"The policy must contain a valid version string ({version!r} is not "
                            f"one of {', '.join(VERSIONS)})")
        if "Id" in doc and not isinstance(doc["Id"], str):
            raise malformed("Id must be a string")
        if "Statement" not in doc:
            raise malformed("Missing required field Statement")
        raw = doc["Statement"]
        raws = raw if isinstance(raw, list) else [raw]
        if not raws:
            raise malformed("Missing required field Statement")
        variables = version == "2012-10-17"
        statements = [Statement(r, bucket, variables) for r in raws]
        sids = [s.sid for s in statements if s.sid]
        if len(sids) != len(set(sids)):
            raise malformed("Statement IDs (SID) in a single policy must be unique")
        return cls(statements, version)

    @classmethod
    def parse_cached(cls, text: str, bucket: str) -> BucketPolicy:
        """`parse`, remembered for the last few (text, bucket) pairs: a policy is read
        on every request of its bucket and changes rarely. Invalid text is never cached."""
        return _parse_cached(text, bucket)

    def evaluate(self, req: AccessRequest, *, now: datetime | None = None
                 ) -> Decision | None:
        """"Deny" if any statement denies, else "Allow" if any allows, else None."""
        arn = ARN_PREFIX + req.bucket + (f"/{req.key}" if req.key is not None else "")
        context = _Context(req, now or datetime.now(UTC))
        allowed = False
        for statement in self.statements:
            if statement.applies(req, arn, context):
                if statement.effect == "Deny":
                    return "Deny"
                allowed = True
        return "Allow" if allowed else None

    def is_public(self) -> bool:
        """Whether GetBucketPolicyStatus calls it public (BlockPublicPolicy refuses it)."""
        return any(s.is_public() for s in self.statements)




@functools.lru_cache(maxsize=256)
def _parse_cached(text: str, bucket: str) -> BucketPolicy:
    return BucketPolicy.parse(text, bucket)
