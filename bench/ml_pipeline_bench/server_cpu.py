"""Server CPU per request, service by service: each process's own CPU counter, read from its
``/metrics`` just before and just after a measured run.

Every service exports prometheus-client's ``process_cpu_seconds_total`` (all its threads: ONNX
Runtime's too); the collector and Jaeger export ``otelcol_process_cpu_seconds``. A source's host
name is resolved to every address behind it, so a service with two replicas counts both.
Counters tick in 10 ms steps (the kernel's clock ticks), so runs of a few hundred requests give
tenths of a millisecond per request.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import httpx

from ml_pipeline.client.balancer import resolve_dns

_CPU_SAMPLE = re.compile(r"^(?:otelcol_)?process_cpu_seconds(?:_total)?(?:\{[^}]*\})?\s+(\S+)\s*$", re.M)


def cpu_seconds(exposition: str) -> float:
    """The process CPU counter in a Prometheus text exposition (ValueError: there is none)."""
    match = _CPU_SAMPLE.search(exposition)
    if match is None:
        raise ValueError("no process_cpu_seconds sample")
    return float(match.group(1))


@dataclass(frozen=True)
class CpuSource:
    """``name=url``: a service and its metrics URL (``model=http://model:9464/metrics``)."""

    name: str
    url: str

    @classmethod
    def parse(cls, text: str) -> CpuSource:
        name, sep, url = text.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"want NAME=http://host:port/metrics, not {text!r}")
        return cls(name, url)


class Meter(Protocol):
    names: list[str]  # what each read should hold

    async def read(self) -> dict[str, float]:
        """CPU seconds so far, per name."""
        ...


class CpuMeter:
    """Reads every source's CPU seconds (summed over the replicas behind its host name)."""

    def __init__(
        self,
        sources: list[CpuSource],
        client: httpx.AsyncClient | None = None,
        resolve: Callable[[str, int], Awaitable[list[str]]] = resolve_dns,
    ):
        self.sources = sources
        self.names = [source.name for source in sources]
        self._client = client
        self._resolve = resolve

    async def read(self) -> dict[str, float]:
        """CPU seconds so far per source; a source that cannot be read is left out (with a warning)."""
        client = self._client or httpx.AsyncClient(timeout=5)
        try:
            totals: dict[str, float] = {}
            for source in self.sources:
                try:
                    totals[source.name] = await self._read_one(client, source)
                except (httpx.HTTPError, OSError, ValueError) as error:
                    print(f"server CPU: {source.name} unreadable ({error!r})", file=sys.stderr)
            return totals
        finally:
            if self._client is None:
                await client.aclose()

    async def _addresses(self, url: httpx.URL) -> list[str]:
        """An address is itself (``localhost`` would also give ``::1``: one server, counted twice or
        not at all); a name is every replica behind it."""
        try:
            ipaddress.ip_address(url.host)
            return [url.host]
        except ValueError:
            return await self._resolve(url.host, url.port or (443 if url.scheme == "https" else 80))

    async def _read_one(self, client: httpx.AsyncClient, source: CpuSource) -> float:
        url = httpx.URL(source.url)
        total = 0.0
        for address in await self._addresses(url):
            response = await client.get(url.copy_with(host=address))
            response.raise_for_status()
            total += cpu_seconds(response.text)
        return total


def per_request_ms(
    before: dict[str, float], after: dict[str, float], requests: int, expected: Iterable[str] = ()
) -> dict[str, float]:
    """CPU milliseconds per request for every source; NaN for one that was not read both times or
    whose counter went backwards (a restarted replica), so a total over them cannot look whole."""
    if requests <= 0:
        return {}
    result = {}
    for name in sorted(set(before) | set(after) | set(expected)):
        spent = after.get(name, math.nan) - before.get(name, math.nan)
        result[name] = 1000 * spent / requests if spent >= 0 else math.nan
    return result


def process_cpu_seconds(pid: int) -> float:
    """A local process's user + system CPU seconds so far (Linux: /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class ProcessCpuMeter:
    """The CPU of local processes (``pids()`` at each read), summed under one name."""

    def __init__(self, name: str, pids: Callable[[], list[int]]):
        self.names = [name]
        self._name = name
        self._pids = pids

    async def read(self) -> dict[str, float]:
        return {self._name: sum(process_cpu_seconds(pid) for pid in self._pids())}


class Meters:
    """Several meters read as one (each under its own names)."""

    def __init__(self, *meters: Meter):
        self.names = [name for meter in meters for name in meter.names]
        self._meters = meters

    async def read(self) -> dict[str, float]:
        readings: dict[str, float] = {}
        for meter in self._meters:
            readings |= await meter.read()
        return readings
