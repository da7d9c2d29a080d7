"""The load generator's clients against a real uvicorn server (the services' ``uvicorn_config``):
wrk driving the same upload, and the open loop's lean raw-HTTP sender."""

import pytest

from ml_pipeline_bench.load import multipart_body
from support.apps import free_port
from support.data import COFFEE_JPG
from support.servers import serving
from support.tools import tool

pytestmark = pytest.mark.anyio


@pytest.fixture
def http_server():
    """A real uvicorn server on a free port (wrk needs a socket): /ok answers 200, /fail 500."""
    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import JSONResponse

    from ml_pipeline.cli import uvicorn_config

    app = FastAPI()
    uploads = []

    @app.post("/ok")
    async def ok(file: UploadFile = File(...)):
        uploads.append(len(await file.read()))
        return {"ok": True}

    @app.post("/fail")
    async def fail():
        return JSONResponse({"error": "no"}, status_code=500)

    @app.post("/timed")
    async def timed():  # the stage breakdown the services send
        return JSONResponse({}, headers={"Server-Timing": "Model.Inference;dur=12.5, preprocess.decode;dur=3"})

    port = free_port()
    with serving(uvicorn_config(app, "127.0.0.1", port)):
        yield f"http://127.0.0.1:{port}", uploads


@pytest.fixture
def wrk() -> str:
    return tool("wrk", "apt-get install wrk (Debian's package)")


def test_wrk_drives_the_same_upload_and_counts_failures(wrk, http_server):
    from ml_pipeline_bench.load import run_wrk

    base, uploads = http_server
    results = run_wrk(f"{base}/ok", COFFEE_JPG, [1, 2], duration_s=1, warmup_s=0)
    assert [r.concurrency for r in results] == [1, 2]
    for r in results:
        s = r.summary()
        assert s["requests"] > 0 and s["errors"] == 0 and s["statuses"] == {"200": s["requests"]}
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] and s["client_cpu_ms_per_request"] > 0
    assert set(uploads) == {COFFEE_JPG.stat().st_size}  # every request carried the whole image as a multipart file
    [failing] = run_wrk(f"{base}/fail", COFFEE_JPG, [1], duration_s=1, warmup_s=0)
    assert failing.errors == failing.requests > 0 and failing.statuses["200"] == 0


async def test_the_raw_sender_speaks_http_to_a_real_server(http_server):
    """The open loop's lean client: status codes, keep-alive reuse, a whole multipart upload."""
    import asyncio

    from ml_pipeline_bench.load import RawHttpSender

    base, uploads = http_server
    body, content_type = multipart_body(COFFEE_JPG)
    ok = RawHttpSender(f"{base}/ok", body, content_type)
    answers = await asyncio.gather(*(ok() for _ in range(6)))
    answers += [await ok() for _ in range(4)]  # sequential: over the pooled connections
    assert [status for status, _ in answers] == [200] * 10
    assert len(ok._idle) <= 6 and uploads[-10:] == [COFFEE_JPG.stat().st_size] * 10
    failing = RawHttpSender(f"{base}/fail", body, content_type)
    assert (await failing())[0] == 500
    missing = RawHttpSender(f"{base}/nope", body, content_type)
    assert (await missing())[0] == 404
    assert (await ok())[1] == {}  # no Server-Timing, no stages
    timed = RawHttpSender(f"{base}/timed", body, content_type)
    assert await timed() == (200, {"Model.Inference": 12.5, "preprocess.decode": 3.0})  # names as sent
    ok.close()
    with pytest.raises(OSError):
        await RawHttpSender(f"http://127.0.0.1:{free_port()}/x", b"", "a/b")()


async def test_the_raw_sender_resends_once_on_a_connection_the_server_closed(http_server):
    import asyncio

    from ml_pipeline_bench.load import RawHttpSender

    base, _ = http_server
    body, content_type = multipart_body(COFFEE_JPG)
    sender = RawHttpSender(f"{base}/ok", body, content_type)
    assert (await sender())[0] == 200
    ((_reader, writer),) = sender._idle
    stale_reader = asyncio.StreamReader()
    stale_reader.feed_eof()  # as if the server had closed it while idle
    sender._idle = [(stale_reader, writer)]
    assert (await sender())[0] == 200  # answered over a new connection
    sender.close()
