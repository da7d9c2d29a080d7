"""Every span attribute and event the services set is one of ``ml_pipeline.core.wire.Attr``'s keys, and
docs/observability.md's tracing section lists exactly those keys."""

import re

import httpx
import pytest

from ml_pipeline.core import wire
from support.apps import NetworkASGITransport, make_settings, running_chain
from support.data import COFFEE_JPG
from support.docs import section

pytestmark = pytest.mark.anyio


def own_spans(exporter):
    """Spans of the services' own tracers (``ml_pipeline.<service>``), not the instrumentations'."""
    return [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name.startswith("ml_pipeline.")]


async def test_the_services_set_only_the_attributes_wire_defines(tmp_path, exporter):
    known = set(wire.span_attribute_keys().values())
    settings = make_settings(shared_data_dir=tmp_path, allow_transport_override=True, result_cache_size=4)
    upload = {"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")}
    async with running_chain(settings, exporter) as client:
        for _ in range(2):  # a cache miss, then a hit
            assert (await client.post("/finalize", files=upload)).status_code == 200
        pre = httpx.AsyncClient(
            transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test"
        )
        for mode in wire.PREDICT_HANDOFFS:
            assert (await pre.post("/process", params={"transport": mode}, files=upload)).status_code == 200
        await pre.aclose()
    spans = own_spans(exporter)
    assert {s.name for s in spans} >= {
        "decode",
        "resize",
        "normalize",
        "handoff",
        "tensor_decode",
        "inference",
        "cache_lookup",
        "forward",
        "postprocess",
    }
    used = {key for s in spans for key in s.attributes}
    used |= {key for s in spans for event in s.events for key in [event.name, *event.attributes]}
    assert used - known == set(), f"span attributes not defined in ml_pipeline.core.wire: {sorted(used - known)}"
    assert len(used) >= 20  # the check saw the pipeline's attributes, not an empty set


def test_the_observability_page_lists_every_attribute_key():
    listed_section = section("observability.md", "## Tracing and logs")
    listed = set(re.findall(r"^\| `([a-z_.]+)`(?:, `([a-z_.]+)`)? \|", listed_section, flags=re.M))
    listed_keys = {key for pair in listed for key in pair if key}
    assert listed_keys == set(wire.span_attribute_keys().values())
