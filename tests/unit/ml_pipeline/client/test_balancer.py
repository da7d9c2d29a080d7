"""Load spreading, failover, ejection and re-resolution, against fake and real replicas."""

import asyncio
import collections

import httpx
import pytest

from ml_pipeline.client.balancer import Balancer
from ml_pipeline.client.downstream import Downstream
from ml_pipeline.client.retry import RetryBudget
from ml_pipeline.core import deadline, wire
from ml_pipeline.core.errors import (
    BadGateway,
    DeadlineExceeded,
    DownstreamTimeout,
    DownstreamUnavailable,
    PipelineError,
)
from ml_pipeline.observability import metrics
from support.downstreams import Clock, model_downstream, static_resolver

pytestmark = pytest.mark.anyio


async def test_least_outstanding_spreads_evenly_and_prefers_the_idle():
    balancer = Balancer(
        "http://model:5000", resolve_interval_s=2, eject_s=5, resolver=static_resolver(["10.0.0.1", "10.0.0.2"])
    )
    await balancer.ensure_fresh()
    assert sorted(e.base_url for e in balancer.endpoints) == ["http://10.0.0.1:5000", "http://10.0.0.2:5000"]
    counts = collections.Counter(balancer.pick().address for _ in range(1000))
    assert 400 < counts["10.0.0.1"] < 600  # random among equals
    busy, idle = balancer.endpoints
    busy.outstanding = 3
    assert {balancer.pick().address for _ in range(50)} == {idle.address}
    assert balancer.pick(exclude={idle}) is busy


async def test_refresh_adds_and_removes_replicas_and_keeps_their_state():
    addresses = ["10.0.0.1"]

    async def resolve(host, port):
        return list(addresses)

    clock = Clock()
    balancer = Balancer("http://model:5000", resolve_interval_s=2, eject_s=5, resolver=resolve, clock=clock)
    await balancer.ensure_fresh()
    first = balancer.endpoints[0]
    first.outstanding = 1
    addresses[:] = ["10.0.0.1", "10.0.0.3"]
    await balancer.ensure_fresh()  # not due yet
    assert len(balancer.endpoints) == 1
    clock.now += 2
    await balancer.ensure_fresh()
    await asyncio.sleep(0)  # the background refresh runs
    assert {e.address for e in balancer.endpoints} == {"10.0.0.1", "10.0.0.3"}
    assert next(e for e in balancer.endpoints if e.address == "10.0.0.1") is first
    addresses[:] = ["10.0.0.3"]
    await balancer.refresh()
    assert [e.address for e in balancer.endpoints] == ["10.0.0.3"]


async def test_a_failed_replica_is_ejected_then_tried_again_with_growing_cooldown():
    clock = Clock()
    balancer = Balancer(
        "http://model:5000", resolve_interval_s=2, eject_s=5, resolver=static_resolver(["a", "b"]), clock=clock
    )
    await balancer.refresh()
    bad, good = balancer.endpoints
    balancer.failed(bad)
    assert {balancer.pick().address for _ in range(50)} == {good.address}
    clock.now += 5  # cooldown over: half-open, it may be picked again
    assert bad.address in {balancer.pick().address for _ in range(50)}
    balancer.failed(bad)
    assert bad.ejected_until == clock.now + 10  # second consecutive failure: doubled
    balancer.succeeded(bad)
    assert not bad.ejected(clock.now) and bad.failures == 0
    balancer.failed(bad)
    clock.now += 1
    balancer.failed(good)  # a second later, so its cooldown ends a second after bad's
    assert {balancer.pick().address for _ in range(20)} == {bad.address}  # all ejected: the one back soonest


async def test_dns_failure_keeps_the_known_replicas():
    calls = 0

    async def flaky(host, port):
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("DNS down")
        return ["10.0.0.1"]

    balancer = Balancer("http://model:5000", resolve_interval_s=0.001, eject_s=5, resolver=flaky)
    await balancer.refresh()
    await balancer.refresh()
    assert [e.address for e in balancer.endpoints] == ["10.0.0.1"]


# --------------------------------------------------------------------------- Downstream over fake replicas


def replicas(behaviour: dict[str, object]):
    """A transport where each host behaves as told: an int status, or an exception to raise."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        seen.append(host)
        outcome = behaviour[host]
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(
            outcome,
            json={"error": {"code": "x", "message": f"{host} says {outcome}"}} if outcome >= 400 else {"ok": host},
        )

    return httpx.MockTransport(handle), seen


def downstream(transport, addresses, **overrides) -> Downstream:
    return model_downstream("http://model:5000", addresses, transport=transport, **overrides)


async def test_connection_errors_and_5xx_fail_over_to_another_replica():
    transport, seen = replicas({"10.0.0.1": httpx.ConnectError("refused"), "10.0.0.2": 503, "10.0.0.3": 200})
    d = downstream(transport, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    for _ in range(5):
        assert (await d.post("/predict", content=b"x")).json() == {"ok": "10.0.0.3"}
    # Each failing replica was tried at most once: after failing it is ejected.
    assert seen.count("10.0.0.1") <= 1 and seen.count("10.0.0.2") <= 1 and seen.count("10.0.0.3") == 5


async def test_attempts_are_bounded_and_the_last_error_is_reported():
    transport, seen = replicas({f"10.0.0.{i}": 503 for i in range(1, 6)})
    d = downstream(transport, [f"10.0.0.{i}" for i in range(1, 6)], max_attempts=3)
    with pytest.raises(Exception) as err:
        await d.post("/predict", content=b"x")
    assert err.value.status == 503 and len(seen) == 3 and len(set(seen)) == 3

    transport, seen = replicas({"10.0.0.1": 500, "10.0.0.2": 500})
    with pytest.raises(BadGateway):
        await downstream(transport, ["10.0.0.1", "10.0.0.2"]).post("/predict", content=b"x")
    assert len(seen) == 2  # never the same replica twice for one request


async def test_client_errors_are_not_retried():
    transport, seen = replicas({"10.0.0.1": 400, "10.0.0.2": 400})
    with pytest.raises(BadGateway):
        await downstream(transport, ["10.0.0.1", "10.0.0.2"]).post("/predict", content=b"x")
    assert len(seen) == 1


async def test_without_retry_statuses_only_connection_failures_are_retried():
    transport, seen = replicas({"10.0.0.1": 503, "10.0.0.2": 503})
    d = downstream(transport, ["10.0.0.1", "10.0.0.2"], retry_statuses=frozenset(), pass_client_errors=True)
    with pytest.raises(Exception) as err:
        await d.post("/process", content=b"x")
    assert err.value.status == 503 and len(seen) == 1


async def test_every_replica_down_is_a_clear_503_and_no_address_too():
    transport, _ = replicas({"10.0.0.1": httpx.ConnectError("refused"), "10.0.0.2": httpx.ReadError("reset")})
    with pytest.raises(DownstreamUnavailable):
        await downstream(transport, ["10.0.0.1", "10.0.0.2"]).post("/predict", content=b"x")
    with pytest.raises(DownstreamUnavailable, match=r"could not be reached \(no replica is known\)") as err:
        await downstream(transport, []).post("/predict", content=b"x")
    assert "resolves to no address" in err.value.detail  # the operator's words, for the log


async def test_a_read_timeout_uses_up_the_deadline_and_is_a_504():
    transport, _seen = replicas({"10.0.0.1": httpx.ReadTimeout("slow"), "10.0.0.2": 200})
    with pytest.raises(DownstreamTimeout):
        await downstream(transport, ["10.0.0.1"]).post("/predict", content=b"x")


async def test_a_hung_replica_times_out_is_ejected_and_the_call_retried_elsewhere():
    """Real waiting, not a mocked exception: the hung replica sleeps past the attempt timeout."""
    seen = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "10.0.0.1":
            await asyncio.sleep(5)
        return httpx.Response(200, json={"ok": request.url.host})

    d = downstream(httpx.MockTransport(handle), ["10.0.0.1", "10.0.0.2"], attempt_timeout_s=0.2)
    d.balancer.pick = lambda exclude=frozenset(), pick=d.balancer.pick: (  # the hung one first
        next((e for e in d.balancer.endpoints if e.address == "10.0.0.1" and e not in exclude), None) or pick(exclude)
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    r = await d.post("/predict", content=b"x")
    took = loop.time() - start
    assert r.json() == {"ok": "10.0.0.2"} and seen == ["10.0.0.1", "10.0.0.2"]
    assert 0.2 <= took < 1.0
    hung = next(e for e in d.balancer.endpoints if e.address == "10.0.0.1")
    assert hung.ejected(d.balancer._clock())


async def test_all_attempts_share_one_deadline_which_the_next_hop_is_told():
    sent_timeouts = []

    async def handle(request: httpx.Request) -> httpx.Response:
        sent_timeouts.append(int(request.headers[wire.REQUEST_TIMEOUT_HEADER]))
        await asyncio.sleep(5)  # every replica hangs
        return httpx.Response(200)

    d = downstream(
        httpx.MockTransport(handle), [f"10.0.0.{i}" for i in range(1, 4)], timeout_s=0.6, attempt_timeout_s=0.25
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DownstreamTimeout):
        await d.post("/predict", content=b"x")
    took = loop.time() - start
    assert 0.5 <= took < 0.9, took  # three attempts of 0.25 s would be 0.75 s: the hop's 0.6 s wins
    assert sent_timeouts[0] <= 600 and sent_timeouts == sorted(sent_timeouts, reverse=True)
    assert sent_timeouts[-1] < sent_timeouts[0] - 200  # each attempt is told what is left, not a fresh budget

    # The request's own deadline (shorter than the hop's timeout) bounds the attempts too, and says so.
    token = deadline.start(0.3)
    try:
        start = loop.time()
        bound = downstream(httpx.MockTransport(handle), ["10.0.0.1", "10.0.0.2"], timeout_s=5)
        with pytest.raises(DeadlineExceeded):
            await bound.post("/predict", content=b"x")
        assert loop.time() - start < 0.6
        # The caller's deadline ran out, not the replica's patience: nobody is ejected for it.
        assert not any(e.ejected(bound.balancer._clock()) for e in bound.balancer.endpoints)
    finally:
        deadline.reset(token)


async def test_no_call_is_made_once_the_deadline_has_passed():
    transport, seen = replicas({"10.0.0.1": 200})
    token = deadline.start(-1)
    try:
        with pytest.raises(DeadlineExceeded):
            await downstream(transport, ["10.0.0.1"]).post("/predict", content=b"x")
    finally:
        deadline.reset(token)
    assert seen == []


async def test_the_retry_budget_bounds_retries_to_a_tenth_of_requests():
    transport, seen = replicas({"10.0.0.1": 503, "10.0.0.2": 503, "10.0.0.3": 503})
    clock = Clock()
    budget = RetryBudget(0.1, 3, window_s=10, clock=clock)
    d = downstream(transport, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], budget=budget)
    for _ in range(200):  # every replica failing: without a budget, 3 attempts each = 600 calls
        with pytest.raises(PipelineError):
            await d.post("/predict", content=b"x")
    retries = len(seen) - 200
    assert retries <= 3 + 0.1 * 200 and retries >= 0.1 * 200
    # A new window brings a new budget.
    clock.now += 11
    seen.clear()
    with pytest.raises(PipelineError):
        await d.post("/predict", content=b"x")
    assert len(seen) == 3


async def test_a_busy_replica_is_retried_elsewhere_but_not_ejected():
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.1":
            return httpx.Response(
                503, headers={"Retry-After": "1"}, json={"error": {"code": "overloaded", "message": "busy"}}
            )
        return httpx.Response(200, json={"ok": request.url.host})

    d = downstream(httpx.MockTransport(handle), ["10.0.0.1", "10.0.0.2"], budget=RetryBudget(1.0, 10))
    for _ in range(10):
        assert (await d.post("/predict", content=b"x")).json() == {"ok": "10.0.0.2"}
    busy = next(e for e in d.balancer.endpoints if e.address == "10.0.0.1")
    assert not busy.ejected(d.balancer._clock()) and busy.failures == 0


async def test_retries_are_counted_and_the_attempts_are_on_the_span():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    transport, _ = replicas({"10.0.0.1": httpx.ConnectError("refused"), "10.0.0.2": 200})
    d = downstream(transport, ["10.0.0.1", "10.0.0.2"])
    d.balancer.pick = lambda exclude=frozenset(), pick=d.balancer.pick: (
        next((e for e in d.balancer.endpoints if e.address == "10.0.0.1" and e not in exclude), None) or pick(exclude)
    )
    before = metrics.DOWNSTREAM_RETRIES.labels("model", "connect_error")._value.get()
    with provider.get_tracer("t").start_as_current_span("handoff"):
        await d.post("/predict", content=b"x")
    (span,) = exporter.get_finished_spans()
    assert span.attributes["ml_pipeline.downstream.attempts"] == 2
    assert [e.attributes["error.type"] for e in span.events if e.name == "ml_pipeline.downstream.attempt_failed"] == [
        "connect_error"
    ]
    assert metrics.DOWNSTREAM_RETRIES.labels("model", "connect_error")._value.get() == before + 1


async def test_readiness_needs_one_ready_replica():
    transport, _ = replicas({"10.0.0.1": httpx.ConnectError("refused"), "10.0.0.2": 200})
    ok, reason = await downstream(transport, ["10.0.0.1", "10.0.0.2"]).is_ready(1)
    assert ok and reason == "model ready (2 replicas known)"
    transport, _ = replicas({"10.0.0.1": 503})
    ok, reason = await downstream(transport, ["10.0.0.1"]).is_ready(1)
    assert not ok and "HTTP 503" in reason
