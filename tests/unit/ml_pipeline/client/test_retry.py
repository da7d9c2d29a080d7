"""The one retry policy (ml_pipeline.client.retry): attempts, the budget, the jittered pause within
the deadline, and the retries metric — the same for the HTTP and the gRPC clients."""

import time

import pytest

from ml_pipeline.client.retry import RETRY_BACKOFF_CAP_S, RetryBudget, RetryPolicy
from ml_pipeline.observability import metrics
from support.downstreams import Clock

pytestmark = pytest.mark.anyio


def counted(reason: str, downstream: str = "retry-test") -> float:
    return metrics.DOWNSTREAM_RETRIES.labels(downstream, reason)._value.get()


def test_retry_budget_window_slides():
    clock = Clock()
    budget = RetryBudget(0.5, 1, window_s=10, clock=clock)
    assert budget.try_spend() and not budget.try_spend()  # the minimum, with no requests yet
    for _ in range(4):
        budget.record_request()
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()  # 1 + 0.5 × 4 = 3
    clock.now += 10.5
    assert budget.try_spend() and not budget.try_spend()  # everything aged out: the minimum again


async def test_attempts_are_bounded_by_max_attempts():
    policy = RetryPolicy("retry-test", max_attempts=3, budget=RetryBudget(1.0, 10))
    far = time.monotonic() + 60
    assert await policy.another_attempt(1, "timeout", far)
    assert await policy.another_attempt(2, "timeout", far)
    assert not await policy.another_attempt(3, "timeout", far)
    assert not await RetryPolicy("retry-test").another_attempt(1, "timeout", far)  # one attempt by default


async def test_each_retry_is_counted_by_reason_and_a_refused_one_as_budget_exhausted():
    policy = RetryPolicy("retry-test", max_attempts=5, budget=RetryBudget(0.0, 1))
    before_timeout, before_exhausted = counted("timeout"), counted("budget_exhausted")
    policy.record_call()
    far = time.monotonic() + 60
    assert await policy.another_attempt(1, "timeout", far)  # the budget's minimum: one
    assert not await policy.another_attempt(2, "timeout", far)
    assert counted("timeout") == before_timeout + 1 and counted("budget_exhausted") == before_exhausted + 1


async def test_no_retry_whose_pause_would_outlast_the_deadline():
    policy = RetryPolicy("retry-test", max_attempts=10, budget=RetryBudget(1.0, 100))
    assert not await policy.another_attempt(1, "unavailable", time.monotonic())  # no time left at all
    # The pause grows with the attempts, capped: never more than RETRY_BACKOFF_CAP_S.
    start = time.monotonic()
    for attempts in range(1, 9):
        assert await policy.another_attempt(attempts, "unavailable", time.monotonic() + 1)
    assert time.monotonic() - start <= 8 * RETRY_BACKOFF_CAP_S + 0.5
