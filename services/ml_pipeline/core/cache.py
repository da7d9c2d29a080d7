"""A bounded in-memory result cache: LRU with a time-to-live, keyed by the hash of the input bytes.

Used by postprocess to answer a repeated image without running the chain. Off by default
(``RESULT_CACHE_SIZE=0``): it trades memory and staleness (a model swapped behind a running
postprocess keeps serving cached answers until their TTL ends) for throughput on repeated
inputs. Per process: replicas each keep their own. Only accessed from the event loop, so no lock.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


def content_key(data: bytes) -> str:
    """SHA-256 of the bytes: equal inputs share an entry, different ones never collide in practice."""
    return hashlib.sha256(data).hexdigest()


class ResultCache(Generic[V]):
    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        if max_entries < 0 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 0 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)  # most recently used
        return value

    def put(self, key: str, value: V) -> None:
        if not self.enabled:
            return
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # least recently used
