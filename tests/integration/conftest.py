"""Integration tests run against a deployed stack (the compose `tests` service sets the URLs).

Without ``STACK_POSTPROCESS_URL`` they skip — unless ``REQUIRE_STACK=1`` (set in the compose test
run and so in CI), where a missing stack is a failure, never a skip.
"""

import os

import httpx
import pytest

URLS = {
    "postprocess": os.environ.get("STACK_POSTPROCESS_URL"),
    "preprocess": os.environ.get("STACK_PREPROCESS_URL"),
    "model": os.environ.get("STACK_MODEL_URL"),
}


def _missing(variable: str) -> None:
    reason = f"no deployed stack: set {variable} (run: bash tests/run.sh)"
    if os.environ.get("REQUIRE_STACK") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    for name, url in URLS.items():
        if not url:
            _missing(f"STACK_{name.upper()}_URL")
    return URLS


@pytest.fixture(scope="session")
def jaeger(stack) -> str:
    url = os.environ.get("STACK_JAEGER_URL")
    if not url:
        _missing("STACK_JAEGER_URL")
    return url


@pytest.fixture(scope="session")
def prometheus(stack) -> str:
    url = os.environ.get("STACK_PROMETHEUS_URL")
    if not url:
        _missing("STACK_PROMETHEUS_URL")
    return url


@pytest.fixture(scope="session")
def stack_control(stack):
    """Docker control of the stack's containers (failover and backpressure tests)."""
    project = os.environ.get("STACK_COMPOSE_PROJECT")
    if not project:
        _missing("STACK_COMPOSE_PROJECT")
    from integration.stack_control import StackControl  # needs the `docker` package, only installed for tests

    control = StackControl(project)
    control.docker.ping()
    return control


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack["postprocess"], timeout=30) as c:
        yield c
