"""Fixtures every test may use; shared helpers live in the ``support`` package."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.data import COFFEE_JPG


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def coffee_bytes() -> bytes:
    return COFFEE_JPG.read_bytes()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def pytest_collection_modifyitems(config, items):
    """The soak first: it measures the stack in a steady state, not one still digesting the fuzzing,
    hostile-input and injected-span tests (their traces and series stay in Jaeger and Prometheus)."""
    items.sort(key=lambda item: 0 if item.path.name == "test_soak.py" and item.path.parent.name == "integration" else 1)
