"""postprocess's result cache through the in-process chain."""

import pytest

from ml_pipeline.observability import metrics
from support.apps import make_settings, running_chain
from support.data import CHELSEA_JPG, COFFEE_JPG
from support.traces import by_trace, service


def upload(data: bytes):
    return {"file": ("photo.jpg", data, "image/jpeg")}


def lookups(result: str) -> float:
    return metrics.CACHE_LOOKUPS.labels("postprocess", result)._value.get()


@pytest.mark.anyio
async def test_a_repeated_image_is_answered_from_the_cache(exporter):
    coffee, cat = COFFEE_JPG.read_bytes(), CHELSEA_JPG.read_bytes()
    hits, misses = lookups("hit"), lookups("miss")
    async with running_chain(make_settings(result_cache_size=4), exporter) as client:
        first = (await client.post("/finalize", files=upload(coffee))).json()
        again = (await client.post("/finalize", files=upload(coffee))).json()
        other = (await client.post("/finalize", files=upload(cat))).json()
    assert (first["cached"], again["cached"], other["cached"]) == (False, True, False)
    same = ("class_id", "label", "score", "top5", "model", "backend")
    assert {k: again[k] for k in same} == {k: first[k] for k in same}
    assert again["trace_id"] != first["trace_id"]
    assert set(again["timings_ms"]) == {"postprocess.cache_lookup", "postprocess.total"}
    assert (lookups("hit") - hits, lookups("miss") - misses) == (1, 2)

    traces = by_trace(exporter.get_finished_spans())
    hit_trace = traces[again["trace_id"]]
    assert {service(s) for s in hit_trace} == {"postprocess"}  # the chain was skipped
    lookup = next(s for s in hit_trace if s.name == "cache_lookup")
    assert lookup.attributes["ml_pipeline.cache.hit"] is True
    miss_lookup = next(s for s in traces[first["trace_id"]] if s.name == "cache_lookup")
    assert miss_lookup.attributes["ml_pipeline.cache.hit"] is False
    assert {"preprocess", "model"} <= {service(s) for s in traces[first["trace_id"]]}


@pytest.mark.anyio
async def test_the_cache_is_off_by_default(exporter):
    coffee = COFFEE_JPG.read_bytes()
    async with running_chain(make_settings(), exporter) as client:
        answers = [(await client.post("/finalize", files=upload(coffee))).json() for _ in range(2)]
    assert [a["cached"] for a in answers] == [False, False]
    assert not [s for s in exporter.get_finished_spans() if s.name == "cache_lookup"]
