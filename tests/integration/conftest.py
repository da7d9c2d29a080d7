"""Integration tests run against a deployed stack (the compose `tests` service sets the URLs).

Without ``STACK_POSTPROCESS_URL`` they skip — unless ``REQUIRE_STACK=1`` (set in the compose test
run and so in CI), where a missing stack is a failure, never a skip.
"""

import os

import httpx
import pytest

URLS = {
    "edge": os.environ.get("STACK_EDGE_URL"),  # the public entry: nginx in front of postprocess
    "postprocess": os.environ.get("STACK_POSTPROCESS_URL"),
    "preprocess": os.environ.get("STACK_PREPROCESS_URL"),
    "model": os.environ.get("STACK_MODEL_URL"),
}


def _required(variable: str) -> str:
    """The stack setting in ``variable``; without it, skip — or fail, where a stack is required."""
    value = os.environ.get(variable)
    if not value:
        reason = f"no deployed stack: set {variable} (run: bash tests/run.sh)"
        if os.environ.get("REQUIRE_STACK") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return value


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    for name in URLS:
        _required(f"STACK_{name.upper()}_URL")
    return URLS


@pytest.fixture(scope="session")
def model_grpc(stack) -> str:
    """host:port of the model's Open Inference Protocol gRPC service."""
    return _required("STACK_MODEL_GRPC")


@pytest.fixture(scope="session")
def jaeger(stack) -> str:
    return _required("STACK_JAEGER_URL")


@pytest.fixture(scope="session")
def prometheus(stack) -> str:
    return _required("STACK_PROMETHEUS_URL")


@pytest.fixture(scope="session")
def collector(stack) -> str:
    """The collector's OTLP/HTTP base URL."""
    return _required("STACK_COLLECTOR_URL")


@pytest.fixture(scope="session")
def stack_control(stack):
    """Docker control of the stack's containers (failover and backpressure tests)."""
    project = _required("STACK_COMPOSE_PROJECT")
    from support.stack_control import StackControl  # needs the `docker` package, only installed for tests

    control = StackControl(project)
    control.docker.ping()
    return control


@pytest.fixture
def client(stack):
    """A client of the public entry, as users call it (through the edge)."""
    with httpx.Client(base_url=stack["edge"], timeout=30) as c:
        yield c
