"""Admission control, deadlines and over-limit bodies: unit tests on a tiny app built with the
services' own skeleton (support.skeleton); what only a socket shows is in
tests/service/test_admission_sockets.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from ml_pipeline.core import deadline, wire
from ml_pipeline.observability import metrics
from support.skeleton import client, refused, slow_app, started

pytestmark = pytest.mark.anyio


async def test_excess_requests_are_refused_at_once_with_retry_after():
    hold = asyncio.Event()
    app = slow_app("adm-full", hold=hold, max_in_flight=2, max_queue=2, queue_timeout_s=5)
    before = refused("adm-full", "queue_full")
    async with client(app) as c:
        admitted = [asyncio.create_task(c.post("/work")) for _ in range(4)]  # 2 in flight + 2 queued
        await asyncio.sleep(0.1)
        start = time.perf_counter()
        extra = await c.post("/work")
        took = time.perf_counter() - start
        probe = await c.get("/health")
        hold.set()
        answers = await asyncio.gather(*admitted)
    assert extra.status_code == 503 and took < 0.05, (extra.text, took)
    err = extra.json()["error"]
    assert err["code"] == "overloaded" and err["retry_after_s"] == 1.0 and extra.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200] * 4 and app.state.started == 4
    assert probe.status_code == 200  # probes never wait or get refused
    assert refused("adm-full", "queue_full") == before + 1
    # Answered before routing, still counted under its route (not as "unmatched").
    assert metrics.REQUESTS.labels("adm-full", "/work", "POST", "503")._value.get() == 1


async def test_a_request_queued_too_long_is_refused_and_never_worked_on():
    hold = asyncio.Event()
    app = slow_app("adm-qt", hold=hold, max_in_flight=1, max_queue=4, queue_timeout_s=0.2)
    async with client(app) as c:
        first = asyncio.create_task(c.post("/work"))
        await started(app)
        start = time.perf_counter()
        queued = await c.post("/work")
        waited = time.perf_counter() - start
        hold.set()
        assert (await first).status_code == 200
        after = await c.post("/work")  # the slot came back
    assert queued.status_code == 503 and queued.json()["error"]["code"] == "overloaded"
    assert 0.2 <= waited < 1.0
    assert after.status_code == 200 and app.state.started == 2


async def test_queue_is_first_come_first_served():
    hold = asyncio.Event()
    app = slow_app("adm-fifo", hold=hold, max_in_flight=1, max_queue=5, queue_timeout_s=5)
    order = []

    async def send(i):
        r = await c.post("/work")
        order.append(i)
        return r

    async with client(app) as c:
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(send(i)))
            await asyncio.sleep(0.02)
        hold.set()
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_the_deadline_is_the_callers_if_shorter_and_is_passed_on():
    app = slow_app("adm-dl", request_timeout_s=10)
    async with client(app) as c:
        default = (await c.post("/work")).json()["remaining_s"]
        asked = (await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "1500"})).json()["remaining_s"]
        longer = (await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "60000"})).json()["remaining_s"]
        bad = await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "soon"})
        negative = await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "-5"})
    assert 9 < default <= 10 and 1 < asked <= 1.5 and 9 < longer <= 10  # a caller can shorten, never lengthen
    assert bad.status_code == 400 and negative.status_code == 400
    assert wire.REQUEST_TIMEOUT_HEADER in bad.json()["error"]["message"]


async def test_a_deadline_that_passes_in_the_queue_is_a_504_not_work():
    hold = asyncio.Event()
    app = slow_app("adm-dlq", hold=hold, max_in_flight=1, max_queue=4, queue_timeout_s=5)
    async with client(app) as c:
        first = asyncio.create_task(c.post("/work"))
        await started(app)
        late = await c.post("/work", headers={wire.REQUEST_TIMEOUT_HEADER: "100"})
        hold.set()
        await first
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert app.state.started == 1


def test_deadline_check_and_header_value():
    assert deadline.remaining() is None
    deadline.check("anything")  # no deadline outside a request: nothing to check
    token = deadline.start(0.5)
    try:
        assert 400 <= int(deadline.header_value(deadline.remaining())) <= 500
        assert deadline.parse_timeout_header(deadline.header_value(0.25)) == 0.25  # what one hop sends, the next reads
        assert deadline.header_value(0.0001) == "1"  # never 0, which the next hop would refuse
        deadline.check("early work")
    finally:
        deadline.reset(token)
    token = deadline.start(-0.01)
    try:
        with pytest.raises(Exception) as err:
            deadline.check("late work")
        assert err.value.status == 504 and "late work" in err.value.message
    finally:
        deadline.reset(token)


async def test_uploads_up_to_the_body_limit_stay_in_memory(monkeypatch, tmp_path):
    """A 3 MB upload (over starlette's 1 MiB spool) never touches /tmp: with no usable temporary
    directory it is still read whole (a full /tmp used to make large uploads 400s)."""
    import tempfile

    from starlette.formparsers import MultiPartParser

    monkeypatch.setattr(MultiPartParser, "spool_max_size", 1024 * 1024)  # starlette's, whatever ran before
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    app = slow_app("adm-memory", max_body=4_000_000)
    async with client(app) as c:
        r = await c.post("/file", files={"upload": ("a.bin", b"z" * 3_000_000)})
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": 3_000_000}


async def test_the_body_budget_always_admits_one_body_of_the_largest_size():
    app = slow_app("adm-small-budget", max_body=5000, max_buffered_body_bytes=10)
    async with client(app) as c:
        r = await c.post("/upload", content=b"z" * 5000)
    assert r.status_code == 200 and r.json() == {"bytes": 5000}
