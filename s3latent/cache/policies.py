"""Byte-budgeted, size-aware eviction policies: LRU and S3-FIFO.

S3-FIFO (Yang et al., SOSP'23): new objects enter a small FIFO (10% of the
bytes); those accessed again while there move to the main FIFO, the rest are
evicted and remembered in a ghost FIFO of keys, so that a quick return goes
straight to main. Main is a FIFO with a 2-bit access counter per object that
buys reinsertion instead of eviction. Every operation is O(1) amortised.
Single-threaded use (the event loop).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Protocol

DEFAULT_POLICY = "s3fifo"


class ByteCache(Protocol):
    capacity: int
    used_bytes: int

    def get(self, key: Hashable) -> Any | None: ...

    def peek(self, key: Hashable) -> Any | None: ...

    def put(self, key: Hashable, value: Any, size: int) -> list[Hashable]: ...

    def remove(self, key: Hashable) -> None: ...

    def __contains__(self, key: Hashable) -> bool: ...

    def __len__(self) -> int: ...


class LRUByteCache:
    """Least recently used, by bytes."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.used_bytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = max(0, int(value))
        self._evict()

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def peek(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Any, size: int) -> list[Hashable]:
        self.remove(key)
        if size > self._capacity:
            return []
        self._items[key] = (value, size)
        self.used_bytes += size
        return self._evict()

    def _evict(self) -> list[Hashable]:
        evicted = []
        while self.used_bytes > self._capacity and self._items:
            key, (_, size) = self._items.popitem(last=False)
            self.used_bytes -= size
            evicted.append(key)
        return evicted

    def remove(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.used_bytes -= item[1]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class S3FIFOByteCache:
    """S3-FIFO by bytes; see the module docstring."""

    SMALL_RATIO = 0.1

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.used_bytes = 0
        self._small: OrderedDict[Hashable, list[Any]] = OrderedDict()  # key -> [value, size, freq]
        self._main: OrderedDict[Hashable, list[Any]] = OrderedDict()
        self._ghost: OrderedDict[Hashable, int] = OrderedDict()  # key -> size
        self._small_bytes = 0
        self._ghost_bytes = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = max(0, int(value))
        self._evict()

    def _find(self, key: Hashable) -> list[Any] | None:
        return self._small.get(key) or self._main.get(key)

    def get(self, key: Hashable) -> Any | None:
        item = self._find(key)
        if item is None:
            return None
        item[2] = min(item[2] + 1, 3)
        return item[0]

    def peek(self, key: Hashable) -> Any | None:
        item = self._find(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Any, size: int) -> list[Hashable]:
        self.remove(key)
        if size > self._capacity:
            return []
        if key in self._ghost:
            self._ghost_bytes -= self._ghost.pop(key)
            self._main[key] = [value, size, 0]
        else:
            self._small[key] = [value, size, 0]
            self._small_bytes += size
        self.used_bytes += size
        return self._evict()

    def _evict(self) -> list[Hashable]:
        evicted: list[Hashable] = []
        while self.used_bytes > self._capacity:
            if self._small and (self._small_bytes > self._capacity * self.SMALL_RATIO
                                or not self._main):
                self._evict_small(evicted)
            elif self._main:
                self._evict_main(evicted)
            else:
                break
        return evicted

    def _evict_small(self, evicted: list[Hashable]) -> None:
        key, item = self._small.popitem(last=False)
        self._small_bytes -= item[1]
        if item[2] > 0:  # accessed while in small: promote
            item[2] = 0
            self._main[key] = item
            return
        self.used_bytes -= item[1]
        evicted.append(key)
        self._ghost[key] = item[1]
        self._ghost_bytes += item[1]
        while self._ghost_bytes > self._capacity and self._ghost:
            self._ghost_bytes -= self._ghost.popitem(last=False)[1]

    def _evict_main(self, evicted: list[Hashable]) -> None:
        key, item = self._main.popitem(last=False)
        if item[2] > 0:  # reinsert with one access less
            item[2] -= 1
            self._main[key] = item
            return
        self.used_bytes -= item[1]
        evicted.append(key)

    def remove(self, key: Hashable) -> None:
        item = self._small.pop(key, None)
        if item is not None:
            self._small_bytes -= item[1]
        else:
            item = self._main.pop(key, None)
        if item is not None:
            self.used_bytes -= item[1]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._small or key in self._main

    def __len__(self) -> int:
        return len(self._small) + len(self._main)


def make_cache(policy: str, capacity: int) -> ByteCache:
    name = DEFAULT_POLICY if policy == "default" else policy
    if name == "lru":
        return LRUByteCache(capacity)
    if name == "s3fifo":
        return S3FIFOByteCache(capacity)
    raise ValueError(f"unknown cache policy {policy!r}: lru, s3fifo or default")
