"""Client-side balancing over real model replicas: two uvicorn servers on one port of two loopback
addresses, as two replicas behind one name are in compose — with httpx's own transport and with
aiohttp's under it (``DOWNSTREAM_HTTP_TRANSPORT``): balancing, failover, deadlines and trace
context must not depend on what carries the bytes."""

import asyncio
import collections
import contextlib

import numpy as np
import pytest
from opentelemetry.trace import NoOpTracerProvider

from ml_pipeline.cli import uvicorn_config
from ml_pipeline.client.downstream import RETRYABLE_5XX, Downstream
from ml_pipeline.client.retry import RetryPolicy
from ml_pipeline.core import codec, wire
from model.app import create_app
from support.apps import free_port, make_settings
from support.downstreams import static_resolver
from support.servers import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def two_model_replicas():
    """Two real uvicorn model servers on the same port of two loopback addresses, as two replicas
    behind one name are in compose."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        servers = {
            instance: stack.enter_context(
                serving(uvicorn_config(create_app(make_settings(service_instance_id=instance)), address, port))
            )
            for address, instance in (("127.0.0.1", "replica-a"), ("127.0.0.2", "replica-b"))
        }
        yield port, servers


def replicas_client(
    port: int, http_transport: str, tracer_provider=None, addresses=("127.0.0.1", "127.0.0.2")
) -> Downstream:
    return Downstream(
        "model",
        f"http://model.local:{port}",
        timeout_s=10,
        connect_timeout_s=1,
        tracer_provider=tracer_provider or NoOpTracerProvider(),
        pass_client_errors=False,
        retry=RetryPolicy("model", 3),
        retry_statuses=RETRYABLE_5XX,
        eject_s=30,
        resolver=static_resolver(list(addresses)),
        http_transport=http_transport,
    )


@pytest.mark.slow
@pytest.mark.parametrize("http_transport", ["httpx", "aiohttp"])
async def test_real_replicas_share_the_load_and_a_stopped_one_costs_no_request(two_model_replicas, http_transport):
    port, servers = two_model_replicas
    d = replicas_client(port, http_transport)
    body = codec.encode(np.zeros((1, 3, 224, 224), np.float32))
    headers = {"Content-Type": wire.NPY_MEDIA_TYPE}

    async def classify():
        return (await d.post("/predict", content=body, headers=headers)).headers["X-Model-Instance"]

    async def burst(n, concurrency=4):
        sem = asyncio.Semaphore(concurrency)

        async def one():
            async with sem:
                return await classify()

        return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))

    spread = await burst(100)
    assert set(spread) == {"replica-a", "replica-b"} and all(35 <= n <= 65 for n in spread.values()), spread

    servers["replica-b"].should_exit = True  # stops listening, closes idle keep-alive connections
    await asyncio.sleep(1.0)  # uvicorn checks should_exit every 0.1 s
    after = await burst(40)
    assert after == {"replica-a": 40}  # every request answered, by the replica that is left
    await d.aclose()


@pytest.mark.parametrize("http_transport", ["httpx", "aiohttp"])
async def test_the_trace_context_and_the_deadline_reach_the_replica(http_transport):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ml_pipeline.core import deadline

    seen: list[dict[str, str]] = []

    async def echo(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    with serving(uvicorn_config(echo, "127.0.0.1", port)):
        d = replicas_client(port, http_transport, provider, addresses=["127.0.0.1"])
        token = deadline.start(5.0)
        try:
            assert (await d.post("/predict", content=b"x")).text == "ok"
        finally:
            deadline.reset(token)
        await d.aclose()
    (client_span,) = exporter.get_finished_spans()
    (headers,) = seen
    trace_id, span_id = format(client_span.context.trace_id, "032x"), format(client_span.context.span_id, "016x")
    assert headers["traceparent"].split("-")[1:3] == [trace_id, span_id]
    assert 0 < int(headers[wire.REQUEST_TIMEOUT_HEADER.lower()]) <= 5000  # ms left of the 5 s deadline


async def test_httpcore_finds_sniffio_without_retrying_an_import():
    # Without sniffio installed, httpcore retries a failing `import sniffio` on every pool operation
    # (58 µs each, ~6% of a hop's CPU): the dependency is pinned for speed, not for features.
    import sys

    from httpcore._synchronization import current_async_library

    assert current_async_library() == "asyncio"
    assert "sniffio" in sys.modules
