"""The JSON log formatter: the ids of the span a line was logged in, whenever it is formatted, and
fields a call's ``extra`` cannot overwrite."""

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ml_pipeline.observability.logs import JsonFormatter, setup_logging
from support.apps import make_settings


@pytest.fixture
def logged(monkeypatch):
    """Records as the services' logging setup creates them, kept unformatted (a queued handler)."""
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored after
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    setup_logging("svc", make_settings(service_instance_id="i-1"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root.handlers[:] = [handler]
    return records


def test_a_line_formatted_after_its_span_ended_keeps_the_span_ids(logged):
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("ml_pipeline.test").warning("inside")
    logging.getLogger("ml_pipeline.test").warning("outside")
    inside, outside = (
        json.loads(JsonFormatter("svc", "i-1").format(r)) for r in logged
    )  # formatted now, no span current
    ctx = span.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
    assert outside["trace_id"] is None and outside["span_id"] is None


def test_extra_fields_join_the_line_but_never_replace_its_own(logged):
    logging.getLogger("ml_pipeline.test").warning(
        "hello", extra={"trace_id": "forged", "service": "other", "replica": 3}
    )
    line = json.loads(JsonFormatter("svc", "i-1").format(logged[0]))
    assert (line["trace_id"], line["service"], line["message"], line["replica"]) == (None, "svc", "hello", 3)
