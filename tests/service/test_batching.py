"""DYNAMIC_BATCHING through the model app: concurrent /predict requests run as one batch and each
gets exactly its own scores; the batch is a span linked to the requests' inference spans, counted
in the batch histograms, and visible in the protocol's model configuration."""

import asyncio

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from ml_pipeline.core import codec, wire
from model.app import create_app
from model.backends import RandomBackend
from support.apps import make_settings

pytestmark = pytest.mark.anyio


def tensors(n):
    rng = np.random.default_rng(11)
    return [rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32) for _ in range(n)]


def batches_run() -> float:
    return REGISTRY.get_sample_value("ml_pipeline_batch_size_count", {"service": "model"}) or 0.0


async def test_concurrent_requests_run_as_one_batch_and_each_gets_its_own_scores(exporter):
    before = batches_run()
    app = create_app(make_settings(dynamic_batching=True, max_queue_delay_ms=200, max_batch=4), span_exporter=exporter)
    xs = tensors(4)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as client:
            answers = await asyncio.gather(
                *(
                    client.post("/predict", content=codec.encode(x), headers={"Content-Type": wire.NPY_MEDIA_TYPE})
                    for x in xs
                )
            )
            config = (await client.get("/v2/models/random-1000/config")).json()
    assert [a.status_code for a in answers] == [200] * 4
    for x, answer in zip(xs, answers, strict=True):
        np.testing.assert_array_equal(codec.decode(answer.content), RandomBackend().predict(x))
    assert batches_run() == before + 1  # four requests, one batch (max_batch reached: no waiting)
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 200_000}
    spans = exporter.get_finished_spans()
    (batch,) = [s for s in spans if s.name == "batch"]
    inference = [s for s in spans if s.name == "inference"]
    assert batch.attributes["ml_pipeline.batch.size"] == 4 and len(inference) == 4
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in inference}
    assert len({s.context.trace_id for s in inference}) == 4  # four requests, four traces, one batch


async def test_without_dynamic_batching_the_config_says_nothing_of_it():
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as client:
            config = (await client.get("/v2/models/random-1000/config")).json()
    assert "dynamic_batching" not in config
