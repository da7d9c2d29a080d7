"""Real uvicorn servers, real sockets: several large requests over ONE keep-alive connection must
give one separate, complete trace each.

Guards against CPython gh-140947 / uvicorn #2167: on the plain asyncio loop, contextvars leak
between keep-alive requests whose bodies exceed 64 KiB, so later requests joined the first
request's trace downstream. ``uvicorn_config`` sets ``reset_contextvars=True``; with it off, this
test fails on asyncio's loop (later requests' preprocess/model spans land in the first trace). It runs
on both loops ``EVENT_LOOP`` offers: uvloop, the default, and asyncio's own.
"""

from __future__ import annotations

import contextlib

import httpx
import pytest

from ml_pipeline.cli import uvicorn_config
from support.apps import free_port, make_settings
from support.data import COFFEE_JPG
from support.servers import serving as serving_one
from support.traces import assert_complete_chain, by_trace

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def serving(apps: dict[str, object], ports: dict[str, int], **config_overrides):
    with contextlib.ExitStack() as stack:
        for name, app in apps.items():
            config = uvicorn_config(app, "127.0.0.1", ports[name])
            for key, value in config_overrides.items():
                setattr(config, key, value)
            stack.enter_context(serving_one(config))
        yield


def run_keepalive_requests(exporter, count: int, **config_overrides) -> list[str]:
    from model.app import create_app as create_model
    from postprocess.app import create_app as create_post
    from preprocess.app import create_app as create_pre

    ports = {name: free_port() for name in ("model", "preprocess", "postprocess")}
    settings = make_settings(
        model_url=f"http://127.0.0.1:{ports['model']}", preprocess_url=f"http://127.0.0.1:{ports['preprocess']}"
    )
    apps = {
        "model": create_model(settings, span_exporter=exporter),
        "preprocess": create_pre(settings, span_exporter=exporter),
        "postprocess": create_post(settings, span_exporter=exporter),
    }
    photo = COFFEE_JPG.read_bytes()
    assert len(photo) > 64 * 1024  # the leak needs bodies over 64 KiB (every hop here carries one)
    with serving(apps, ports, **config_overrides):  # leaving it joins the servers: every span has ended
        # One connection for all requests: keep-alive on every hop.
        with httpx.Client(
            base_url=f"http://127.0.0.1:{ports['postprocess']}", limits=httpx.Limits(max_connections=1)
        ) as client:
            trace_ids = []
            for _ in range(count):
                r = client.post("/finalize", files={"file": ("coffee.jpg", photo, "image/jpeg")})
                assert r.status_code == 200, r.text
                trace_ids.append(r.json()["trace_id"])
    return trace_ids


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_each_keepalive_request_is_its_own_complete_trace(exporter, loop):
    trace_ids = run_keepalive_requests(exporter, 5, loop=loop)
    assert len(set(trace_ids)) == 5
    traces = by_trace(exporter.get_finished_spans())
    assert sorted(traces) == sorted(trace_ids)
    for trace_id in trace_ids:
        assert_complete_chain(traces[trace_id])
