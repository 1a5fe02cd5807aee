"""S3 access control lists: canned ACLs, grant headers, the AccessControlPolicy document.

An ACL is its owner's canonical ID and a list of grants (grantee, permission). Grantees are
canonical user IDs or the AllUsers / AuthenticatedUsers / LogDelivery groups; a grant by
e-mail address is resolved to the configured user's ID when the ACL is set (as S3 does), so a
stored ACL names IDs and groups only. Stored as JSON (`Acl.to_json`): the bucket record
"acl", an object's internal metadata or its PutObjectAcl record (docs/access-control.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import S3Error
from . import xml

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
GROUPS = (ALL_USERS, AUTHENTICATED_USERS, LOG_DELIVERY)
PUBLIC_GROUPS = (ALL_USERS, AUTHENTICATED_USERS)
PERMISSIONS = ("FULL_CONTROL", "READ", "WRITE", "READ_ACP", "WRITE_ACP")
CANNED = ("private", "public-read", "public-read-write", "authenticated-read",
          "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write")
GRANT_HEADERS = {
    "x-amz-grant-read": "READ",
    "x-amz-grant-write": "WRITE",
    "x-amz-grant-read-acp": "READ_ACP",
    "x-amz-grant-write-acp": "WRITE_ACP",
    "x-amz-grant-full-control": "FULL_CONTROL",
}
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_GRANTEE_ITEM = re.compile(r'\s*([A-Za-z]+)\s*=\s*("([^"]*)"|[^,\s]*)\s*(,|$)')


@dataclass(frozen=True)
class Grant:
    """One grant: `kind` is "id" (a canonical user ID) or "group" (a group URI)."""

    kind: str
    value: str
    permission: str


@dataclass(frozen=True)
class Acl:
    owner: str  # canonical ID
    grants: tuple[Grant, ...]

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner,
                "grants": [[g.kind, g.value, g.permission] for g in self.grants]}

    @classmethod
    def from_json(cls, data: Any) -> Acl | None:
        """The ACL stored as `data`; None when it is not one (treated as no record)."""
        try:
            grants = tuple(Grant(str(k), str(v), str(p)) for k, v, p in data["grants"])
            return cls(str(data["owner"]), grants)
        except (KeyError, TypeError, ValueError):
            return None

    def allows(self, principal_id: str | None, permission: str) -> bool:
        """Whether a grant gives `permission` to the caller (None: anonymous)."""
        for g in self.grants:
            if g.permission not in (permission, "FULL_CONTROL"):
                continue
            if g.kind == "group" and (g.value == ALL_USERS or (
                    g.value == AUTHENTICATED_USERS and principal_id is not None)):
                return True
            if g.kind == "id" and principal_id is not None and g.value == principal_id:
                return True
        return False

    def is_public(self) -> bool:
        """Whether it grants anything to everyone or to every authenticated user."""
        return any(g.kind == "group" and g.value in PUBLIC_GROUPS for g in self.grants)

    def without_public(self) -> Acl:
        """The ACL with its public grants ignored (IgnorePublicAcls)."""
        return Acl(self.owner, tuple(g for g in self.grants
                                     if not (g.kind == "group" and g.value in PUBLIC_GROUPS)))


def private(owner: str) -> Acl:
    return Acl(owner, (Grant("id", owner, "FULL_CONTROL"),))


def canned(name: str, owner: str, bucket_owner: str | None, *, for_bucket: bool) -> Acl:
    """A canned ACL's grants, as S3 expands them (InvalidArgument for an unknown name)."""
    if name not in CANNED:
        raise S3Error("InvalidArgument", f"Invalid canned ACL: {name!r}",
                      ArgumentName="x-amz-acl", ArgumentValue=name[:100])
    # Group grants first, then the owner's: the order S3-compatible stores list them in
    # (clients and ceph/s3-tests index into it).
    grants: list[Grant] = []
    if name in ("public-read", "public-read-write"):
        grants.append(Grant("group", ALL_USERS, "READ"))
    if name == "public-read-write":
        grants.append(Grant("group", ALL_USERS, "WRITE"))
    if name == "authenticated-read":
        grants.append(Grant("group", AUTHENTICATED_USERS, "READ"))
    if name == "log-delivery-write" and for_bucket:
        grants += [Grant("group", LOG_DELIVERY, "WRITE"), Grant("group", LOG_DELIVERY, "READ_ACP")]
    grants.append(Grant("id", owner, "FULL_CONTROL"))
    if name in ("bucket-owner-read", "bucket-owner-full-control") and not for_bucket and \
            bucket_owner is not None and bucket_owner != owner:
        grants.append(Grant("id", bucket_owner, "READ" if name == "bucket-owner-read"
                            else "FULL_CONTROL"))
    return Acl(owner, tuple(grants))


def _resolve(kind: str, value: str, permission: str, config: Config) -> Grant:
    """A grantee as a client names it, resolved to what is stored."""
    if kind == "id":
        if config.user_by_id(value) is None:
            raise S3Error("InvalidArgument", "Invalid id", ArgumentName="CanonicalUser/ID",
                          ArgumentValue=value[:100])
        return Grant("id", value, permission)
    if kind == "email":
        user = config.user_by_email(value)
        if user is None:
            raise S3Error("UnresolvableGrantByEmailAddress",
                          "The e-mail address you provided does not match any account on "
                          "record.", EmailAddress=value[:100])
        return Grant("id", user.id, permission)
    if kind == "uri":
        if value not in GROUPS:
            raise S3Error("InvalidArgument", "Invalid group uri", ArgumentName="Group/URI",
                          ArgumentValue=value[:100])
        return Grant("group", value, permission)
    raise S3Error("InvalidArgument", f"Unknown grantee type {kind!r}",
                  ArgumentName="x-amz-grant", ArgumentValue=kind[:100])


def _parse_grantees(value: str, permission: str, header: str, config: Config) -> list[Grant]:
    """'id="...", emailAddress="...", uri="..."' (x-amz-grant-* values)."""
    grants, pos = [], 0
    value = value.strip()
    while pos < len(value):
        m = _GRANTEE_ITEM.match(value, pos)
        if m is None or m.end() == pos:
            raise S3Error("InvalidArgument", f"Invalid grantee in {header}",
                          ArgumentName=header, ArgumentValue=value[:200])
        name, text = m.group(1).lower(), m.group(3) if m.group(3) is not None else m.group(2)
        kind = {"id": "id", "emailaddress": "email", "uri": "uri"}.get(name)
        if kind is None or not text:
            raise S3Error("InvalidArgument", f"Invalid grantee in {header}",
                          ArgumentName=header, ArgumentValue=value[:200])
        grants.append(_resolve(kind, text, permission, config))
        pos = m.end()
    return grants


def has_acl_headers(headers: Mapping[str, str]) -> bool:
    return "x-amz-acl" in headers or any(h in headers for h in GRANT_HEADERS)


def from_headers(headers: Mapping[str, str], config: Config, *, owner: str,
                 bucket_owner: str | None, for_bucket: bool,
                 canned_value: str | None = None) -> Acl | None:
    """The ACL a write's x-amz-acl or x-amz-grant-* headers ask for (None: neither).

    `canned_value` stands for x-amz-acl where it comes from elsewhere (a POST form's field).
    """
    name = canned_value if canned_value is not None else headers.get("x-amz-acl")
    present = [h for h in GRANT_HEADERS if h in headers]
    if name is not None and present:
        raise S3Error("InvalidRequest", "Specifying both Canned ACLs and Header Grants is not "
                      "allowed")
    if name is not None:
        return canned(name.strip(), owner, bucket_owner, for_bucket=for_bucket)
    if not present:
        return None
    grants: list[Grant] = []
    for header in present:
        for value in headers.getall(header) if hasattr(headers, "getall") else [headers[header]]:
            grants += _parse_grantees(value, GRANT_HEADERS[header], header, config)
    return Acl(owner, tuple(grants))


def from_xml(body: bytes, config: Config, *, owner: str) -> Acl:
    """An AccessControlPolicy document (PutBucketAcl / PutObjectAcl body)."""
    doc = xml.parse(body, "AccessControlPolicy")
    owner_el = doc.get("Owner")
    if not isinstance(owner_el, dict) or not xml.text(owner_el.get("ID")).strip():
        raise S3Error("MalformedACLError", "The XML you provided was not well-formed or did not "
                      "validate against our published schema")
    if xml.text(owner_el.get("ID")).strip() != owner:
        raise S3Error("AccessDenied", "The owner of an ACL cannot be changed.")
    acl_el = doc.get("AccessControlList")
    if acl_el is None or acl_el == "":
        acl_el = {}
    if not isinstance(acl_el, dict):
        raise S3Error("MalformedACLError", "The XML you provided was not well-formed or did not "
                      "validate against our published schema")
    grants: list[Grant] = []
    for grant in xml.as_list(acl_el.get("Grant")):
        if not isinstance(grant, dict) or not isinstance(grant.get("Grantee"), dict):
            raise S3Error("MalformedACLError", "The XML you provided was not well-formed or "
                          "did not validate against our published schema")
        permission = xml.text(grant.get("Permission")).strip()
        if permission not in PERMISSIONS:
            raise S3Error("MalformedACLError", "The XML you provided was not well-formed or "
                          "did not validate against our published schema")
        grantee = grant["Grantee"]
        for field, kind in (("ID", "id"), ("EmailAddress", "email"), ("URI", "uri")):
            if field in grantee:
                grants.append(_resolve(kind, xml.text(grantee[field]).strip(), permission,
                                       config))
                break
        else:
            raise S3Error("InvalidArgument", "Invalid grantee", ArgumentName="Grantee")
    return Acl(owner, tuple(grants))


def owner_element(user_id: str, config: Config) -> dict[str, str]:
    """<Owner>: the canonical ID and the configured display name (ID if unknown)."""
    user = config.user_by_id(user_id)
    return {"ID": user_id, "DisplayName": user.display_name if user else user_id}


def render(acl: Acl, config: Config) -> bytes:
    """The AccessControlPolicy document Get*Acl answers."""
    grants = []
    # Group grants first, then users', each in the order set (as RGW answers them).
    for g in sorted(acl.grants, key=lambda g: g.kind != "group"):
        if g.kind == "group":
            grantee: dict[str, Any] = {"@xmlns:xsi": _XSI, "@xsi:type": "Group", "URI": g.value}
        else:
            grantee = {"@xmlns:xsi": _XSI, "@xsi:type": "CanonicalUser",
                       **owner_element(g.value, config)}
        grants.append({"Grantee": grantee, "Permission": g.permission})
    return xml.render("AccessControlPolicy", {
        "Owner": owner_element(acl.owner, config),
        "AccessControlList": {"Grant": grants} if grants else "",
    })
