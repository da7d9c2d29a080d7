"""Request deadlines: one absolute deadline per request, carried hop to hop.

A request's deadline is set when it arrives (``REQUEST_TIMEOUT_S``, or less if the caller sends
``X-Request-Timeout-Ms``) and lives in a context variable, so every stage and every worker
thread of that request sees it. Each hop sends what is left on in the same header, and a stage
that would start after the deadline is skipped (``check``): nobody waits for its answer anymore.
Relative milliseconds, not a wall-clock time, so clocks of different hosts never need to agree.
"""

from __future__ import annotations

import contextvars
import time

from ml_pipeline.core.errors import BadRequest, DeadlineExceeded
from ml_pipeline.core.wire import REQUEST_TIMEOUT_HEADER

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("ml_pipeline_deadline", default=None)


def parse_timeout_header(value: str | None) -> float | None:
    """Seconds the caller still waits, from ``X-Request-Timeout-Ms``; None if absent; 400 if nonsense."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = float("nan")
    if not ms > 0 or ms == float("inf"):  # also catches NaN
        raise BadRequest(f"{REQUEST_TIMEOUT_HEADER} must be a positive number of milliseconds, not {value[:40]!r}")
    return ms / 1000


def start(timeout_s: float) -> contextvars.Token[float | None]:
    """Set the current request's deadline ``timeout_s`` from now; ``reset`` with the token after."""
    return _deadline.set(time.monotonic() + timeout_s)


def reset(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current request's deadline (negative once passed); None outside a request."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def check(what: str) -> None:
    """Raise 504 ``deadline_exceeded`` instead of starting ``what`` after the deadline."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"the request's deadline passed before {what} (by {-left * 1000:.0f} ms)")


def header_value(seconds: float) -> str:
    """``X-Request-Timeout-Ms`` for ``seconds`` left (at least 1 ms): the format ``parse_timeout_header`` reads."""
    return str(max(1, int(seconds * 1000)))
