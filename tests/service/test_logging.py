"""Log–trace correlation through the in-process chain: every line a request makes any of the three
services log carries that request's trace id (the one it was answered with), and the span id of a
span of that trace, in the service that logged it — also while another request is in flight.

The lines are captured as the services write them: ``setup_logging``'s JSON handler, its stream
redirected. (That a line formatted later, off the request, keeps its ids is tested with the
formatter in tests/unit/ml_pipeline/observability/test_telemetry.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

import anyio
import pytest

from ml_pipeline.core.errors import PipelineError
from ml_pipeline.observability.logs import setup_logging
from support.apps import make_settings, running_chain
from support.data import CHELSEA_JPG, COFFEE_JPG
from support.traces import service

pytestmark = pytest.mark.anyio


@pytest.fixture
def json_log():
    """The services' real logging setup, writing to a buffer; the previous setup restored after."""
    root = logging.getLogger()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved = (
        root.handlers[:],
        root.level,
        logging.getLogger("httpx").level,
        {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names},
        (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing),
    )
    setup_logging("test", make_settings(log_level="INFO"))
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level, httpx_level, loggers, lookups = saved
        logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = lookups
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(httpx_level)
        for n, (handlers, propagate) in loggers.items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate


def lines_since(buffer: io.StringIO, mark: int) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue()[mark:].splitlines()]


def upload(path):
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


async def test_every_line_of_two_concurrent_requests_carries_its_own_trace_id(
    json_log, exporter, monkeypatch, tmp_path
):
    """Request A waits inside the model while request B fails there and is logged by all three
    services (request lines and error lines); then A finishes. Each line is assigned to its
    request by what it says (status, message), never by its ids, and must carry that request's
    trace id and a span of that trace from the service that wrote it. (Two model runs at once: A's
    holds its slot until B has been answered.)"""
    async with running_chain(make_settings(shared_data_dir=tmp_path, max_concurrent_inferences=2), exporter) as client:
        backend = client.apps["model"].state.predictor.backend
        real_predict = backend.predict
        a_inside, release = threading.Event(), threading.Event()
        calls = []

        def predict(batch):
            calls.append(len(calls))
            if len(calls) == 1:  # request A: wait here until B has been answered
                a_inside.set()
                assert release.wait(10)
                return real_predict(batch)
            raise PipelineError("injected model failure", status=500, code="injected")  # request B

        monkeypatch.setattr(backend, "predict", predict)
        mark = len(json_log.getvalue())
        task_a = asyncio.get_running_loop().create_task(client.post("/finalize", files=upload(COFFEE_JPG)))
        try:
            assert await anyio.to_thread.run_sync(a_inside.wait, 10)
            b = await client.post("/finalize", files=upload(CHELSEA_JPG))
        finally:
            release.set()
        a = await task_a
        lines = lines_since(json_log, mark)

    assert a.status_code == 200 and b.status_code == 502, (a.text, b.text)
    trace_a, trace_b = a.headers["x-trace-id"], b.headers["x-trace-id"]
    assert trace_a == a.json()["trace_id"] and trace_b == b.json()["error"]["trace_id"] and trace_a != trace_b

    def request_line(line):
        return line["logger"] == "ml_pipeline.request"

    of_a = [line for line in lines if request_line(line) and line["status"] == 200]
    of_b = [line for line in lines if line not in of_a]  # B's request lines (5xx) and every error line
    assert sorted(line["message"] for line in of_a) == ["POST /finalize 200", "POST /predict 200", "POST /process 200"]
    assert sorted(line["message"] for line in of_b if request_line(line)) == [
        "POST /finalize 502",
        "POST /predict 500",
        "POST /process 502",
    ]
    errors = [(line["service"], line["logger"], line["message"]) for line in of_b if not request_line(line)]
    assert ("model", "ml_pipeline.errors", "request failed: injected model failure (injected)") in errors
    assert any(svc == "preprocess" and logger == "ml_pipeline.balancer" for svc, logger, _ in errors)  # model ejected
    assert {svc for svc, logger, _ in errors if logger == "ml_pipeline.errors"} == {
        "model",
        "preprocess",
        "postprocess",
    }

    spans = {
        (format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")): s
        for s in exporter.get_finished_spans()
    }
    for trace_id, own in ((trace_a, of_a), (trace_b, of_b)):
        for line in own:
            assert line["trace_id"] == trace_id, line
            span = spans.get((trace_id, line["span_id"]))
            assert span is not None, f"span_id of {line} is no span of its trace"
            assert line["service"] == service(span), line


def test_a_line_is_made_without_looking_up_where_or_which_thread(json_log):
    """setup_logging turns off what no line shows (the caller's file and line: a stack walk per
    record; thread and process names). The line keeps every field, exceptions included."""
    log = logging.getLogger("ml_pipeline.test")
    record = log.makeRecord(log.name, logging.INFO, "f", 1, "x", None, None)
    assert (record.threadName, record.processName) == (None, None)
    mark = len(json_log.getvalue())
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed: %s", "here", extra={"status": 500})
    (line,) = lines_since(json_log, mark)
    assert line["message"] == "it failed: here" and line["status"] == 500 and line["level"] == "ERROR"
    assert 'raise ValueError("boom")' in line["exception"] and "test_logging.py" in line["exception"]
    assert set(line) == {
        "ts",
        "level",
        "service",
        "instance",
        "trace_id",
        "span_id",
        "logger",
        "message",
        "status",
        "exception",
    }
    records = []
    log.addFilter(lambda record: records.append(record) or False)  # captured, not written
    log.info("where from?")
    log.filters.clear()
    assert records[0].pathname == "(unknown file)"  # logging did not walk the stack
