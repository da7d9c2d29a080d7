"""A model ``Downstream`` over fixed replica addresses, for the client and balancer tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from ml_pipeline.client import RETRYABLE_5XX, Downstream


def static_resolver(addresses: list[str]):
    async def resolve(host, port):
        return list(addresses)

    return resolve


def model_downstream(url: str, addresses: list[str], **overrides: Any) -> Downstream:
    """The model's client as preprocess builds it (3 attempts, 5xx retried), resolving to ``addresses``."""
    options: dict[str, Any] = {
        "timeout_s": 5,
        "connect_timeout_s": 1,
        "tracer_provider": NoOpTracerProvider(),
        "pass_client_errors": False,
        "max_attempts": 3,
        "retry_statuses": RETRYABLE_5XX,
    }
    options.update(overrides)
    return Downstream("model", url, resolver=static_resolver(addresses), **options)
