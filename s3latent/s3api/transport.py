"""Who sent a request and whether it came encrypted: the facts policies (`aws:SourceIp`,
`aws:SecureTransport`) and SSE-C's transport rule are judged on.

A gateway is usually run behind a load balancer that terminates TLS. Its socket then shows
the balancer's address over plain HTTP, which would make every `aws:SourceIp` condition
judge the balancer and every SSE-C request look like cleartext. `[server] trusted_proxies`
names the balancers: for a connection from one of them, `X-Forwarded-For` gives the client
(the nearest address that is not itself a trusted proxy) and `X-Forwarded-Proto` the scheme
the client used. From any other peer those headers are whatever the client wrote and are
ignored (docs/transport.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from ..errors import S3Error

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Request headers (or POST form fields) that carry a customer key.
_SSE_C = ("x-amz-server-side-encryption-customer-algorithm",
          "x-amz-server-side-encryption-customer-key",
          "x-amz-server-side-encryption-customer-key-md5",
          "x-amz-copy-source-server-side-encryption-customer-algorithm",
          "x-amz-copy-source-server-side-encryption-customer-key",
          "x-amz-copy-source-server-side-encryption-customer-key-md5")


@dataclass(frozen=True)
class Transport:
    """The client's address and whether its own connection was encrypted."""

    client_ip: str
    secure: bool


_KEY: web.RequestKey[Transport] = web.RequestKey("s3latent.transport", Transport)


def parse_networks(values: Iterable[str]) -> list[_Network]:
    """CIDR blocks (or single addresses); ValueError names the first bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an address or CIDR block: {value!r}") from exc
    return networks


class TrustedProxies:
    """The balancers whose X-Forwarded-For / X-Forwarded-Proto are believed."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = parse_networks(networks)

    def trusts(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in net for net in self.networks)

    def of(self, request: web.BaseRequest) -> Transport:
        """This request's transport facts (computed once, kept on the request)."""
        known = request.get(_KEY)
        if isinstance(known, Transport):
            return known
        peer = request.remote or ""
        found = Transport(peer, request.secure)
        if self.networks and self.trusts(peer):
            found = Transport(self._client(peer, request.headers.getall("X-Forwarded-For", [])),
                              self._secure(request.secure,
                                           request.headers.getall("X-Forwarded-Proto", [])))
        request[_KEY] = found
        return found

    def _client(self, peer: str, values: list[str]) -> str:
        """Walk the chain from the nearest hop back: the first address that is not a
        trusted proxy is the client; anything a client wrote further left is never reached
        (each trusted proxy appends the address it saw)."""
        client = peer
        for hop in reversed([h.strip() for v in values for h in v.split(",")]):
            ip = _address(hop)
            if ip is None:
                break  # garbage: the last good address stands
            client = str(ip)
            if not self.trusts(client):
                break
        return client

    @staticmethod
    def _secure(socket_secure: bool, values: list[str]) -> bool:
        """The scheme the nearest trusted proxy reports (it sets the header; a value a
        client sent before it is further left and never read)."""
        protos = [p.strip().lower() for v in values for p in v.split(",") if p.strip()]
        if protos and protos[-1] in ("http", "https"):
            return protos[-1] == "https"
        return socket_secure


def known(request: web.BaseRequest) -> Transport:
    """The facts TrustedProxies.of found for this request; the socket's if it never ran."""
    found = request.get(_KEY)
    if isinstance(found, Transport):
        return found
    return Transport(request.remote or "", request.secure)


def refuse_insecure_sse_c(fields: Mapping[str, str], secure: bool, required: bool) -> None:
    """S3 refuses customer keys sent in cleartext: 400 InvalidRequest, before anything is
    read or stored (`[encryption] sse_c_require_tls = false` lifts it, for tests and for
    links the operator knows to be private)."""
    if not required or secure:
        return
    names = {name.lower() for name in fields}
    if any(name in names for name in _SSE_C):
        raise S3Error("InvalidRequest", "Requests specifying Server Side Encryption with "
                      "Customer provided keys must be made over a secure connection.")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]  # [v6]:port
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # v4:port
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
