"""``Downstream``'s timeouts: a read timeout with time left is a hung replica (ejected, retried
elsewhere). tests/unit/ml_pipeline/client/test_balancer.py covers failover, budgets and a hang
simulated by sleeping inside ``httpx.MockTransport``; tests/service/test_hung_replicas.py has
replicas that are real sockets accepting a request and never answering."""

from __future__ import annotations

import httpx
import pytest

from ml_pipeline.client.downstream import Downstream
from ml_pipeline.client.retry import RetryBudget
from ml_pipeline.observability import metrics
from support.downstreams import endpoint, first_pick, model_downstream

pytestmark = pytest.mark.anyio


def downstream(url: str, addresses: list[str], **overrides) -> Downstream:
    return model_downstream(url, addresses, **{"budget": RetryBudget(1.0, 10), **overrides})


def retries(reason: str) -> float:
    return metrics.DOWNSTREAM_RETRIES.labels("model", reason)._value.get()


async def test_a_read_timeout_with_time_left_is_retried_on_another_replica_which_answers():
    """httpx's own read timeout (what a socket that stops answering raises), not the client's
    ``asyncio.timeout``: the replica is treated as hung, not as the end of the call."""
    seen = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "10.0.0.1":
            raise httpx.ReadTimeout("no answer within the attempt timeout", request=request)
        return httpx.Response(200, json={"ok": request.url.host})

    d = downstream(
        "http://model:5000", ["10.0.0.1", "10.0.0.2"], attempt_timeout_s=0.3, transport=httpx.MockTransport(handle)
    )
    first_pick(d, "10.0.0.1")
    before = retries("timeout")
    r = await d.post("/predict", content=b"x")
    assert r.json() == {"ok": "10.0.0.2"} and seen == ["10.0.0.1", "10.0.0.2"]
    now = d.balancer._clock()
    assert endpoint(d, "10.0.0.1").ejected(now) and not endpoint(d, "10.0.0.2").ejected(now)
    assert retries("timeout") == before + 1  # counted as a timeout, not a connection failure
