"""A model ``Downstream`` over fixed replica addresses, for the client and balancer tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from ml_pipeline.client.downstream import RETRYABLE_5XX, Downstream
from ml_pipeline.client.retry import RetryBudget, RetryPolicy


class Clock:
    """A monotonic clock the tests move by hand (``clock.now += 11``): the balancer's and the retry
    budget's time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def static_resolver(addresses: list[str]):
    async def resolve(host, port):
        return list(addresses)

    return resolve


def model_downstream(
    url: str, addresses: list[str], *, max_attempts: int = 3, budget: RetryBudget | None = None, **overrides: Any
) -> Downstream:
    """The model's client as preprocess builds it (3 attempts, 5xx retried), resolving to ``addresses``."""
    options: dict[str, Any] = {
        "timeout_s": 5,
        "connect_timeout_s": 1,
        "tracer_provider": NoOpTracerProvider(),
        "pass_client_errors": False,
        "retry": RetryPolicy("model", max_attempts, budget),
        "retry_statuses": RETRYABLE_5XX,
    }
    options.update(overrides)
    return Downstream("model", url, resolver=static_resolver(addresses), **options)


def first_pick(d: Downstream, address: str) -> None:
    """Make ``address`` the balancer's first choice (it picks at random among equals)."""
    pick = d.balancer.pick
    d.balancer.pick = lambda exclude=frozenset(): (
        next((e for e in d.balancer.endpoints if e.address == address and e not in exclude), None) or pick(exclude)
    )


def endpoint(d: Downstream, address: str) -> Any:
    return next(e for e in d.balancer.endpoints if e.address == address)
