"""The result cache on its own: LRU bound, TTL, disabled mode."""

import pytest

from ml_pipeline.cache import ResultCache, content_key


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_hit_miss_and_lru_eviction():
    cache = ResultCache(max_entries=2, ttl_s=60, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)  # evicts b, the least recently used
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_entries_expire_after_the_ttl():
    clock = Clock()
    cache = ResultCache(max_entries=10, ttl_s=5, clock=clock)
    cache.put("a", "x")
    clock.now += 4.9
    assert cache.get("a") == "x"
    clock.now += 0.2
    assert cache.get("a") is None and len(cache) == 0


def test_size_zero_disables_the_cache():
    cache = ResultCache(max_entries=0, ttl_s=5)
    cache.put("a", 1)
    assert not cache.enabled and cache.get("a") is None and len(cache) == 0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        ResultCache(max_entries=-1, ttl_s=5)
    with pytest.raises(ValueError):
        ResultCache(max_entries=1, ttl_s=0)


def test_content_key_is_the_bytes_hash():
    assert content_key(b"abc") == content_key(b"abc") != content_key(b"abd")
    assert len(content_key(b"")) == 64


# --------------------------------------------------------------------------- in postprocess

from conftest import CHELSEA_JPG, COFFEE_JPG, make_settings, running_chain  # noqa: E402
from ml_pipeline import metrics  # noqa: E402
from traces import by_trace, service  # noqa: E402


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
    assert lookup.attributes["cache.hit"] is True
    miss_lookup = next(s for s in traces[first["trace_id"]] if s.name == "cache_lookup")
    assert miss_lookup.attributes["cache.hit"] is False
    assert {"preprocess", "model"} <= {service(s) for s in traces[first["trace_id"]]}


@pytest.mark.anyio
async def test_the_cache_is_off_by_default(exporter):
    coffee = COFFEE_JPG.read_bytes()
    async with running_chain(make_settings(), exporter) as client:
        answers = [(await client.post("/finalize", files=upload(coffee))).json() for _ in range(2)]
    assert [a["cached"] for a in answers] == [False, False]
    assert not [s for s in exporter.get_finished_spans() if s.name == "cache_lookup"]
