"""Client-side load balancing over every replica behind one service name.

Docker's DNS answers a compose service name with one A record per replica, but an HTTP client
that resolves once and keeps its connections alive talks to one replica forever. So the name is
re-resolved every few seconds (a scaled-up or restarted replica joins, a removed one leaves),
each request goes to the replica with the fewest requests outstanding (random among equals), and
a replica that failed is ejected for a cooldown, after which one request may try it again
(half-open); each further failure doubles its cooldown, up to a limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("ml_pipeline.balancer")

# host, port → the IP addresses serving it.
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_EJECT_FACTOR = 8  # a replica that keeps failing is retried at most every 8 × the base cooldown


async def resolve_dns(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(eq=False)
class Endpoint:
    """One replica: its base URL and what the balancer knows about it."""

    address: str
    base_url: str
    outstanding: int = 0
    failures: int = 0  # consecutive
    ejected_until: float = 0.0

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


class Balancer:
    def __init__(
        self,
        url: str,
        *,
        resolve_interval_s: float,
        eject_s: float,
        resolver: Resolver | None = resolve_dns,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``resolver=None``: no resolution, the URL itself is the only endpoint (tests wiring apps
        in-process, or a URL that must be used as written)."""
        parts = urlsplit(url.rstrip("/"))
        if not parts.scheme or not parts.hostname:
            raise ValueError(f"not an absolute URL: {url!r}")
        self.url = url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path
        self._resolver = resolver
        self._resolve_interval_s = resolve_interval_s
        self._eject_s = eject_s
        self._clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._resolved_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        if resolver is None:
            self._endpoints[self.url] = Endpoint(self.url, self.url)

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def _base_url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self._scheme}://{host}:{self._port}{self._path}"

    async def refresh(self) -> None:
        """Resolve the name now; keep the state of replicas that are still there."""
        if self._resolver is None:
            return
        try:
            addresses = await self._resolver(self._host, self._port)
        except OSError as exc:  # DNS down or the name gone: keep what we know, try again later
            log.warning("resolving %s failed: %s", self._host, exc)
            self._resolved_at = self._clock()
            return
        self._resolved_at = self._clock()
        current = set(addresses)
        for address in current - set(self._endpoints):
            self._endpoints[address] = Endpoint(address, self._base_url(address))
        for address in set(self._endpoints) - current:
            del self._endpoints[address]  # requests already sent to it finish on their own

    async def ensure_fresh(self) -> None:
        """Resolve when due: the first time in line, later in the background."""
        if self._resolver is None:
            return
        if not self._endpoints:
            await self.refresh()
        elif self._clock() - self._resolved_at >= self._resolve_interval_s and (
            self._refreshing is None or self._refreshing.done()
        ):
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    def pick(self, exclude: AbstractSet[Endpoint] = frozenset()) -> Endpoint | None:
        """The replica for the next attempt: fewest outstanding requests among those not ejected
        (random among equals); if every candidate is ejected, the one whose cooldown ends first."""
        now = self._clock()
        candidates = [e for e in self._endpoints.values() if e not in exclude]
        if not candidates:
            return None
        healthy = [e for e in candidates if not e.ejected(now)]
        if not healthy:
            return min(candidates, key=lambda e: e.ejected_until)
        fewest = min(e.outstanding for e in healthy)
        return random.choice([e for e in healthy if e.outstanding == fewest])

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.ejected_until = 0.0

    def failed(self, endpoint: Endpoint) -> None:
        """Eject for the cooldown, doubled for each consecutive failure (half-open afterwards)."""
        endpoint.failures += 1
        factor = min(2 ** (endpoint.failures - 1), MAX_EJECT_FACTOR)
        endpoint.ejected_until = self._clock() + self._eject_s * factor
        if endpoint.failures == 1:
            log.warning("ejecting %s for %.1f s", endpoint.base_url, self._eject_s * factor)
