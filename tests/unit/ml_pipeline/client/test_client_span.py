"""The CLIENT span ``Downstream`` makes for each attempt: the semantic conventions' attributes, the
W3C context sent with the call, and which answers count as errors (a 4xx on the upload hop is the
client's, so junk uploads cannot make the tail sampler keep their traces)."""

from __future__ import annotations

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ml_pipeline.client.downstream import Downstream
from ml_pipeline.client.retry import RetryBudget
from ml_pipeline.core.errors import PipelineError
from support.downstreams import first_pick, model_downstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def client_spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


async def test_a_call_has_a_client_span_whose_context_goes_with_it(spans):
    provider, exporter = spans
    sent = []

    async def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("traceparent"))
        return httpx.Response(200, content=b"ok")

    d = model_downstream(
        "http://model:5000", ["10.0.0.7"], tracer_provider=provider, transport=httpx.MockTransport(handle)
    )
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("handoff") as stage:
        await d.post("/predict", content=b"x")
    (span,) = client_spans(exporter)
    assert span.name == "POST" and span.parent.span_id == stage.get_span_context().span_id
    assert dict(span.attributes) == {
        "http.request.method": "POST",
        "url.full": "http://10.0.0.7:5000/predict",
        "server.address": "10.0.0.7",
        "server.port": 5000,
        "http.response.status_code": 200,
    }
    assert span.status.status_code == StatusCode.UNSET
    trace_id, span_id = format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")
    assert sent == [
        f"00-{trace_id}-{span_id}-{span.context.trace_flags:02x}"
    ]  # the next hop's server span is this span's child


@pytest.mark.parametrize(
    ("client_input", "status", "error"),
    [
        (True, 400, False),  # postprocess forwarding an upload preprocess refused: the client's fault
        (True, 502, True),
        (False, 400, True),  # preprocess sent the model something wrong: ours
        (False, 503, True),
    ],
)
async def test_which_answers_make_the_client_span_an_error(spans, client_input, status, error):
    provider, exporter = spans
    transport = httpx.MockTransport(
        lambda request: httpx.Response(status, json={"error": {"code": "x", "message": "m"}})
    )
    d = model_downstream(
        "http://model:5000",
        ["10.0.0.7"],
        tracer_provider=provider,
        transport=transport,
        pass_client_errors=client_input,
        max_attempts=1,
        retry_statuses=frozenset(),
    )
    with pytest.raises(PipelineError):
        await d.post("/predict", content=b"x")
    (span,) = client_spans(exporter)
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code == StatusCode.ERROR) is error
    assert span.attributes.get("error.type") == (str(status) if error else None)


async def test_a_failed_attempt_is_an_error_and_a_retry_counts_its_resends(spans):
    provider, exporter = spans

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.1":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=b"ok")

    d = model_downstream(
        "http://model:5000",
        ["10.0.0.1", "10.0.0.2"],
        tracer_provider=provider,
        transport=httpx.MockTransport(handle),
        budget=RetryBudget(1.0, 10),
    )
    first_pick(d, "10.0.0.1")
    await d.post("/predict", content=b"x")
    failed, answered = client_spans(exporter)
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "ConnectError"
    assert "http.request.resend_count" not in failed.attributes
    assert [e.name for e in failed.events] == ["exception"]
    assert answered.status.status_code == StatusCode.UNSET and answered.attributes["http.request.resend_count"] == 1
    assert answered.attributes["server.address"] == "10.0.0.2"


async def test_readiness_probes_make_no_spans(spans):
    provider, exporter = spans
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    d = model_downstream("http://model:5000", ["10.0.0.7"], tracer_provider=provider, transport=transport)
    assert (await d.is_ready(1.0))[0]
    assert exporter.get_finished_spans() == ()


async def test_without_resolution_the_server_is_the_urls_host(spans):
    provider, exporter = spans
    d = Downstream(
        "preprocess",
        "http://preprocess:5000",
        timeout_s=5,
        connect_timeout_s=1,
        tracer_provider=provider,
        pass_client_errors=True,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok")),
    )
    await d.post("/process", content=b"x")
    (span,) = client_spans(exporter)
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("preprocess", 5000)


async def test_a_cancelled_call_is_no_error(spans):
    provider, exporter = spans
    entered = anyio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        entered.set()
        await anyio.sleep(30)
        return httpx.Response(200)

    d = model_downstream(
        "http://model:5000", ["10.0.0.7"], tracer_provider=provider, transport=httpx.MockTransport(handle)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(d.post, "/predict")
        await entered.wait()
        tg.cancel_scope.cancel()
    (span,) = client_spans(exporter)
    assert span.status.status_code == StatusCode.UNSET and "error.type" not in span.attributes
