"""Replicas that are real sockets (one per loopback address, all on one port, as replicas behind one
name) accepting a request and never answering: the attempt timeout gives a hung one up, and every
attempt of one call draws on one deadline (the hop's timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from ml_pipeline.client.downstream import Downstream
from ml_pipeline.client.retry import RetryBudget
from ml_pipeline.core.errors import DownstreamTimeout
from support.apps import free_port
from support.downstreams import endpoint, first_pick, model_downstream

pytestmark = pytest.mark.anyio


def downstream(url: str, addresses: list[str], **overrides) -> Downstream:
    return model_downstream(url, addresses, **{"budget": RetryBudget(1.0, 10), **overrides})


class HungReplicas:
    """Real TCP listeners (one per loopback address, all on one port, as replicas behind one name)
    that accept a request and never answer; ``answering`` ones send a 200 instead."""

    def __init__(self, answering: set[str] = frozenset()):
        self.port = free_port()
        self.answering = answering
        self.accepted: list[str] = []
        self._servers: list[asyncio.Server] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, addresses: list[str]) -> None:
        for address in addresses:

            async def handle(reader, writer, address=address):
                self.accepted.append(address)
                self._writers.append(writer)
                await reader.readuntil(b"\r\n\r\n")
                if address in self.answering:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                with contextlib.suppress(Exception):
                    await reader.read()  # until the client gives up and closes

            self._servers.append(await asyncio.start_server(handle, address, self.port))

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def replicas(addresses: list[str], answering: set[str] = frozenset()):
    hung = HungReplicas(answering)
    await hung.start(addresses)
    try:
        yield hung
    finally:
        await hung.stop()


async def test_a_replica_hanging_on_a_real_socket_is_given_up_after_the_attempt_timeout():
    async with replicas(["127.0.0.1", "127.0.0.2"], answering={"127.0.0.2"}) as fake:
        d = downstream(f"http://model.local:{fake.port}", ["127.0.0.1", "127.0.0.2"], attempt_timeout_s=0.3)
        first_pick(d, "127.0.0.1")
        start = time.monotonic()
        r = await d.post("/predict", content=b"x")
        took = time.monotonic() - start
        await d.aclose()
    assert r.status_code == 200 and fake.accepted == ["127.0.0.1", "127.0.0.2"]
    assert 0.3 <= took < 0.8, took  # one attempt timeout, not the hop's 5 s
    now = d.balancer._clock()
    assert endpoint(d, "127.0.0.1").ejected(now) and not endpoint(d, "127.0.0.2").ejected(now)


async def test_when_every_replica_hangs_all_attempts_together_stay_within_the_hop_timeout():
    """0.5 s for the hop, 0.4 s an attempt: the second attempt gets the 0.1 s left, not a fresh
    0.4 s (0.8 s in all) nor a fresh hop timeout per attempt (three attempts, 1.2 s). The call
    ends in a timeout; the replica whose attempt the deadline cut short is not blamed for it."""
    addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    async with replicas(addresses) as fake:
        d = downstream(f"http://model.local:{fake.port}", addresses, timeout_s=0.5, attempt_timeout_s=0.4)
        start = time.monotonic()
        with pytest.raises(DownstreamTimeout, match="did not answer"):
            await d.post("/predict", content=b"x")
        took = time.monotonic() - start
        await d.aclose()
    assert 0.45 <= took < 0.65, took
    first, second = fake.accepted  # two attempts, on two replicas
    assert first != second
    now = d.balancer._clock()
    assert endpoint(d, first).ejected(now)  # hung for a whole attempt
    assert not endpoint(d, second).ejected(now)  # cut by the deadline: nobody's fault
