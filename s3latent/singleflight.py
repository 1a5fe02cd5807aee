"""One call in flight per key; concurrent callers for the key share its outcome.

Used wherever concurrent requests would otherwise repeat an expensive step: a read-cache miss
(one backend fetch) and a rendition (one decode). If the caller that started the call goes away
(its request was cancelled), the others are not cancelled with it: one of them starts the call
again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LeaderLeft(Exception):
    """The caller running the shared call was cancelled; waiters try again."""


class SingleFlight(Generic[K, V]):
    """See the module docstring."""

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """(value, shared): `shared` is True when another caller's call produced it."""
        while (pending := self._calls.get(key)) is not None:
            try:
                return await asyncio.shield(pending), True
            except _LeaderLeft:
                continue
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            value = await call()
        except asyncio.CancelledError:
            future.set_exception(_LeaderLeft())
            future.exception()  # retrieved: nobody logs it as lost
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            future.set_result(value)
            return value, False
        finally:
            del self._calls[key]
