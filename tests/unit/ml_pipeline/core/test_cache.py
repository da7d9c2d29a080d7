"""The result cache on its own: LRU bound, TTL, disabled mode."""

import pytest

from ml_pipeline.core.cache import ResultCache, content_key


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
