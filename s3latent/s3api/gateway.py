"""What every handler is given: configuration, the object store, metrics.

Kept apart from the server module so the handlers can name it without importing the
server (which imports them).
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..config import Config
from ..objects.encryption import Keyring
from ..objects.store import ForwardingStore
from .transport import TrustedProxies

if TYPE_CHECKING:
    from ..cluster.node import Cluster


class Gateway:
    """Everything a handler needs: config, the one store (objects.store), metrics.

    Handlers reach storage only through `store`: the backend is behind it.
    """

    def __init__(self, config: Config, store: ForwardingStore, *,
                 registry: CollectorRegistry | None = None,
                 cluster: Cluster | None = None, keyring: Keyring | None = None) -> None:
        self.config = config
        self.store = store
        # SSE-S3 master keys (objects/encryption.py); none: SSE-S3 writes are refused.
        self.keyring = keyring if keyring is not None else Keyring()
        self.cluster = cluster  # None: a lone gateway
        self.proxies = TrustedProxies(config.trusted_proxies)  # s3api/transport.py
        self.leaving = False  # shutting down: /health answers 503, connections close
        self.in_flight = 0  # requests being handled (graceful shutdown waits for them)
        self.drained = asyncio.Event()  # set when leaving and the last one finished
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "s3latent_requests", "S3 requests by operation and status",
            ["operation", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "s3latent_request_seconds", "S3 request latency by operation",
            ["operation"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.storage_full = Counter(
            "s3latent_storage_full", "Writes refused because the backend is out of space "
            "(InsufficientStorage, 507)", ["operation"], registry=self.registry,
        )
        self.node_id = base64.b64encode(os.urandom(24)).decode()
