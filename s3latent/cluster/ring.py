"""Which live node owns a (bucket, image key): rendezvous (highest random weight) hashing.

Every node computes the same owner from the same live set, with no coordination. When a node
leaves, only the keys it owned move (each to its second-highest scorer); when it returns, they
move back. A sidecar key hashes as its image key, so a pair always shares an owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def image_key(key: str, sidecar_suffix: str) -> str:
    """The key a pair is known by: a sidecar's image key, any other key itself."""
    if sidecar_suffix and key.endswith(sidecar_suffix) and len(key) > len(sidecar_suffix):
        return key[: -len(sidecar_suffix)]
    return key


def score(node: str, bucket: str, key: str) -> int:
    """The node's weight for a key (64 bits of SHA-256; stable across processes)."""
    digest = hashlib.sha256(f"{node}\n{bucket}\n{key}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "big")


def owner(nodes: Iterable[str], bucket: str, key: str) -> str:
    """The node with the highest weight for (bucket, key); ties go to the smaller URL."""
    best: tuple[int, str] | None = None
    for node in nodes:
        candidate = (score(node, bucket, key), node)
        if best is None or candidate[0] > best[0] or \
                (candidate[0] == best[0] and candidate[1] < best[1]):
            best = candidate
    if best is None:
        raise ValueError("no nodes")
    return best[1]
