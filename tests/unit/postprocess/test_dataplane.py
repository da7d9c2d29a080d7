"""postprocess's data plane on its own: what it sends preprocess, and the top classes it makes."""

import httpx
import numpy as np
import pytest
from opentelemetry.trace import NoOpTracer, NoOpTracerProvider

from ml_pipeline.client.downstream import Downstream
from ml_pipeline.core import codec
from ml_pipeline.observability.stages import StageTimer
from postprocess.dataplane import Finalizer
from support.apps import make_settings

pytestmark = pytest.mark.anyio

LABELS = 1000


def finalizer(handle) -> Finalizer:
    preprocess = Downstream(
        "preprocess",
        "http://preprocess.test",
        timeout_s=5,
        connect_timeout_s=1,
        tracer_provider=NoOpTracerProvider(),
        pass_client_errors=True,
        transport=httpx.MockTransport(handle),
    )
    return Finalizer(make_settings(result_cache_size=0), preprocess)


async def test_the_upload_goes_to_preprocess_as_the_body_itself_as_octet_stream():
    """Not re-wrapped as multipart; and never with the client's declared type, which preprocess
    would otherwise take for how to read the body."""
    seen: list[httpx.Request] = []
    scores = np.zeros((1, LABELS), np.float32)
    scores[0, 7] = 5.0

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=codec.encode(scores), headers={"X-Model-Name": "m"})

    photo = b"\xff\xd8\xff\xe0 a photo's bytes \r\n--boundary--\r\n"
    result = await finalizer(handle).finalize(photo, StageTimer(NoOpTracer(), "postprocess"))
    (request,) = seen
    assert request.url.path == "/process"
    assert request.content == photo
    assert request.headers["content-type"] == "application/octet-stream"
    assert result["class_id"] == 7 and result["model"] == "m" and len(result["top5"]) == 5
