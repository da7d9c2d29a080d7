"""One retry policy for every client of a downstream service, HTTP and gRPC alike: at most
``max_attempts`` attempts per call, each retry within a retry budget (retries ≤ a share of the
requests, Finagle's and Envoy's budget: when a replica fails everything, retries stay a small
fraction of the traffic instead of multiplying it) and after a jittered pause that still fits the
call's deadline. What counts as worth retrying is each client's (HTTP: connect errors, timeouts,
5xx answers of idempotent calls; gRPC: UNAVAILABLE)."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable

from opentelemetry import trace

from ml_pipeline.core.wire import Attr
from ml_pipeline.observability import metrics

# Pause before a retry: uniform in [0, min(cap, base * 2^(attempt-1))] seconds ("full jitter"),
# so replicas that failed together are not all retried in the same instant.
RETRY_BACKOFF_BASE_S = 0.01
RETRY_BACKOFF_CAP_S = 0.1


class RetryBudget:
    """Retries allowed over a sliding window: ``ratio`` × the requests in it, plus ``minimum``."""

    def __init__(self, ratio: float, minimum: int, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.ratio = ratio
        self.minimum = minimum
        self.window_s = window_s
        self._clock = clock
        self._requests: collections.deque[float] = collections.deque()
        self._retries: collections.deque[float] = collections.deque()

    def _trim(self, now: float) -> None:
        for times in (self._requests, self._retries):
            while times and times[0] <= now - self.window_s:
                times.popleft()

    def record_request(self) -> None:
        now = self._clock()
        self._trim(now)
        self._requests.append(now)

    def try_spend(self) -> bool:
        now = self._clock()
        self._trim(now)
        if len(self._retries) >= self.minimum + self.ratio * len(self._requests):
            return False
        self._retries.append(now)
        return True


class RetryPolicy:
    """When a failed call to ``downstream`` is tried again (see the module's docstring).
    ``budget``: the shared limit (default: 10 % of requests + 3 per 10 s)."""

    def __init__(self, downstream: str, max_attempts: int = 1, budget: RetryBudget | None = None):
        self.downstream = downstream
        self.max_attempts = max_attempts
        self.budget = budget or RetryBudget(0.1, 3)

    def record_call(self) -> None:
        """One call begins (what the budget's share is of)."""
        self.budget.record_request()

    async def another_attempt(self, attempts: int, reason: str, call_deadline: float) -> bool:
        """Whether to try again after ``attempts`` failed ones (the last for ``reason``), before
        ``call_deadline`` (``time.monotonic()``): attempts left, the budget allows it (counted by
        reason in the retries metric, or as ``budget_exhausted`` with the span attribute), and the
        jittered pause, taken here, still leaves time."""
        if attempts >= self.max_attempts:
            return False
        if not self.budget.try_spend():
            metrics.DOWNSTREAM_RETRIES.labels(self.downstream, "budget_exhausted").inc()
            trace.get_current_span().set_attribute(Attr.DOWNSTREAM_RETRY_BUDGET_EXHAUSTED, True)
            return False
        metrics.DOWNSTREAM_RETRIES.labels(self.downstream, reason).inc()
        pause = random.uniform(0, min(RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_BASE_S * 2 ** (attempts - 1)))
        if time.monotonic() + pause >= call_deadline:
            return False
        await asyncio.sleep(pause)
        return True
