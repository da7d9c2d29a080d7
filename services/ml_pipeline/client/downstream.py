"""The one HTTP client a service uses to call the next one in the chain.

Created once at startup (connection pooling, keep-alive), instrumented so every call carries W3C
``traceparent``, with timeouts on every phase. Requests are spread over every replica behind the
downstream's name (``ml_pipeline.client.balancer``: re-resolved every few seconds, least outstanding
requests, failing replicas ejected and retried later). Only replica faults are retried, on
another replica: a connection failure (nothing was processed), an attempt that timed out (a hung
replica, when the hop sets a per-attempt timeout) and the statuses a hop names as retryable (the
model's 5xx: inference is a pure function of the tensor, so a second attempt is safe). Attempts
are bounded, paused with jitter, limited by a retry budget (retries ≤ 10 % of requests, so a
failing replica cannot start a retry storm) and share one deadline: the hop's timeout or the
request's own deadline (``ml_pipeline.core.deadline``), whichever ends first, which is also sent on
to the next hop in ``X-Request-Timeout-Ms``.

Transport failures and downstream errors become ``PipelineError``s with a clear status:
unreachable → 503, too slow → 504, a downstream 5xx → 502, and (for hops that carry the
client's own input) a downstream 4xx passes through unchanged. Their messages say what happened
in plain words ("preprocess could not be reached (connection failed)"): they reach the end
client, so never a replica's address or an exception's class. Those are the operator's: in the
error's ``detail`` (the log line of the failed request), on the attempt-failed span events and
on the CLIENT span of each attempt (``url.full``, ``error.type``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import trace

from ml_pipeline import __version__
from ml_pipeline.client.aiohttp_transport import transport_for
from ml_pipeline.client.balancer import Balancer, Endpoint, Resolver, resolve_dns
from ml_pipeline.client.retry import RetryBudget, RetryPolicy
from ml_pipeline.core import deadline
from ml_pipeline.core.errors import (
    BadGateway,
    DeadlineExceeded,
    DownstreamTimeout,
    DownstreamUnavailable,
    PipelineError,
)
from ml_pipeline.core.wire import REQUEST_TIMEOUT_HEADER, Attr
from ml_pipeline.observability.tracing import end_client_span, start_client_span
from ml_pipeline.settings import DownstreamSettings

log = logging.getLogger("ml_pipeline.client")

RETRYABLE_5XX = frozenset({500, 502, 503, 504})


# Connections one service keeps to the next hop (all replicas together).
DOWNSTREAM_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)


@dataclass(frozen=True)
class _Attempt:
    """How one attempt on one replica went."""

    response: httpx.Response | None = None  # an answer (a success, or a retryable error answer)
    failure: PipelineError | None = None  # no answer: the error to raise if no other attempt succeeds
    reason: str = ""  # why it failed: connect_error, timeout, transport_error, status_5xx
    succeeded: bool = False
    out_of_time: bool = False  # cut by the deadline: no time for another


class Downstream:
    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        tracer_provider: trace.TracerProvider,
        pass_client_errors: bool,
        retry: RetryPolicy | None = None,
        retry_statuses: frozenset[int] = frozenset(),
        attempt_timeout_s: float | None = None,
        resolve_interval_s: float = 2.0,
        eject_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
        http_transport: str = "aiohttp",
    ):
        """``pass_client_errors``: a downstream 4xx is the end client's fault (it rejected their
        upload) and is returned as is; otherwise a 4xx means we sent something wrong → 502.
        ``retry_statuses``: answers worth another replica (only for idempotent calls).
        ``attempt_timeout_s``: how long one attempt may take before the replica counts as hung
        (ejected, and the call retried elsewhere); None: each attempt may use all the time left.
        ``retry``: attempts per call and the retry budget (default: one attempt).
        ``transport`` (tests wiring apps in-process): the URL is used as is, not resolved, unless
        a ``resolver`` is given (default: DNS). ``http_transport``: without a ``transport``,
        httpx's own (``httpx``) or aiohttp's underneath (``aiohttp``)."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._pass_client_errors = pass_client_errors
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self.retry = retry or RetryPolicy(name)
        self._retry_statuses = retry_statuses
        self._attempt_timeout_s = attempt_timeout_s
        self.balancer = Balancer(
            self.base_url,
            resolve_interval_s=resolve_interval_s,
            eject_s=eject_s,
            resolver=resolver or (None if transport is not None else resolve_dns),
        )
        if transport is None:
            transport = transport_for(http_transport, DOWNSTREAM_LIMITS)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s), limits=DOWNSTREAM_LIMITS, transport=transport
        )
        self._tracer = tracer_provider.get_tracer("ml_pipeline.client", __version__)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._send("POST", path, **kwargs)
        if response.status_code >= 400:
            raise self._error_from(response)
        return response

    async def is_ready(self, timeout_s: float) -> tuple[bool, str]:
        """Ready when at least one replica's ``/ready`` answers 200; otherwise why not."""
        await self.balancer.ensure_fresh()
        endpoints = self.balancer.endpoints
        if not endpoints:
            log.warning("%s not ready: %s resolves to no address", self.name, self.base_url)
            return False, f"{self.name} could not be reached (no replica is known)"
        # The first ready replica settles it: a dead replica's address may take the whole
        # timeout to fail, which would make this probe time out for its own caller.
        reasons = []
        for probe in asyncio.as_completed([self._probe(e, timeout_s) for e in endpoints]):
            ok, reason, detail = await probe
            if ok:
                return True, f"{self.name} ready ({len(endpoints)} replicas known)"
            reasons.append((reason, detail))
        # The answer (public on postprocess's /ready) says what; which replica and why, the log.
        log.warning("%s not ready: %s", self.name, "; ".join(detail for _, detail in reasons))
        return False, reasons[0][0]

    async def _probe(self, endpoint: Endpoint, timeout_s: float) -> tuple[bool, str, str]:
        """Whether ``endpoint`` is ready; if not, why (for the answer) and the detail (for the log)."""
        url = f"{endpoint.base_url}/ready"
        try:
            # Not traced, like the /ready routes themselves.
            response = unbound(await self._client.get(url, timeout=timeout_s))
        except httpx.HTTPError as exc:
            return False, f"{self.name} could not be reached", f"GET {url}: {_described(exc)}"
        if response.status_code != 200:
            status = f"HTTP {response.status_code}"
            return False, f"{self.name} not ready ({status})", f"GET {url}: {status}"
        return True, "ready", ""

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        await self.balancer.ensure_fresh()
        deadline.check(f"calling {self.name}")
        hop_deadline = time.monotonic() + self._timeout_s
        left = deadline.remaining()
        request_bound = False
        if left is not None and left < self._timeout_s:  # the caller's deadline comes first
            hop_deadline, request_bound = time.monotonic() + left, True
        self.retry.record_call()
        tried: set[Endpoint] = set()
        failure: PipelineError | None = None
        response: httpx.Response | None = None
        attempt = _Attempt()
        caller_headers = kwargs.pop("headers", {})
        while not tried or await self.retry.another_attempt(len(tried), attempt.reason, hop_deadline):
            endpoint = self.balancer.pick(exclude=tried)
            remaining = hop_deadline - time.monotonic()
            if endpoint is None or remaining <= 0:
                break
            tried.add(endpoint)
            # The next hop learns how long we will wait, and stops working when we would stop waiting.
            headers = {**caller_headers, REQUEST_TIMEOUT_HEADER: deadline.header_value(remaining)}
            attempt = await self._attempt(endpoint, len(tried), method, path, remaining, request_bound, headers, kwargs)
            if attempt.response is not None:
                if attempt.succeeded:
                    return attempt.response
                response = attempt.response
            failure = attempt.failure or failure
            if attempt.out_of_time:
                break
        if response is not None and response.status_code in self._retry_statuses:
            return response  # the last replica's error answer, for the caller to report
        if failure is not None:
            raise failure
        if not self.balancer.endpoints:
            raise DownstreamUnavailable(
                f"{self.name} could not be reached (no replica is known)",
                detail=f"{self.base_url} resolves to no address",
            )
        raise self._timed_out(f"{method} {self.base_url}{path}", request_bound)

    async def _attempt(
        self,
        endpoint: Endpoint,
        number: int,
        method: str,
        path: str,
        remaining: float,
        request_bound: bool,
        headers: dict[str, str],
        kwargs: dict[str, Any],
    ) -> _Attempt:
        """One request to one replica, within ``remaining`` seconds and the attempt timeout."""
        url = f"{endpoint.base_url}{path}"
        attempt_s = min(remaining, self._attempt_timeout_s or remaining)
        endpoint.outstanding += 1
        try:
            response = await self._traced_request(endpoint, number, method, url, attempt_s, headers, kwargs)
        except (httpx.ConnectTimeout, httpx.ConnectError) as exc:
            self._attempt_failed(endpoint, number, "connect_error")
            failure: PipelineError = DownstreamUnavailable(
                f"{self.name} could not be reached (no connection could be made)",
                detail=f"{method} {url}: {_described(exc)}",
            )
            return _Attempt(failure=failure, reason="connect_error")
        except (httpx.TimeoutException, TimeoutError) as exc:
            # Cut by the per-attempt timeout with time left: this replica is hung, ejected like a
            # dead one and the call retried. Cut by the deadline: the time is up, nobody's fault.
            hung = attempt_s < remaining
            self._attempt_failed(endpoint, number, "timeout", eject=hung)
            failure = self._timed_out(f"{method} {url}: {_described(exc)}", request_bound and not hung)
            return _Attempt(failure=failure, reason="timeout", out_of_time=not hung)
        except httpx.TransportError as exc:  # e.g. the replica died mid-request
            self._attempt_failed(endpoint, number, "transport_error")
            failure = DownstreamUnavailable(
                f"{self.name} could not be reached (connection failed)", detail=f"{method} {url}: {_described(exc)}"
            )
            return _Attempt(failure=failure, reason="transport_error")
        finally:
            endpoint.outstanding -= 1
        self._annotate(endpoint, number)
        if response.status_code in self._retry_statuses:
            # 503 + Retry-After is a busy replica refusing work, not a broken one: try another, don't eject.
            busy = response.status_code == 503 and "retry-after" in response.headers
            self._attempt_failed(endpoint, number, "status_5xx", eject=not busy)
            return _Attempt(response=response, reason="status_5xx")
        self.balancer.succeeded(endpoint)
        return _Attempt(response=response, succeeded=True)

    async def _traced_request(
        self,
        endpoint: Endpoint,
        number: int,
        method: str,
        url: str,
        attempt_s: float,
        headers: dict[str, str],
        kwargs: dict[str, Any],
    ) -> httpx.Response:
        """The request itself, in its CLIENT span, bounded as a whole by ``attempt_s`` (httpx times
        each socket operation, not the attempt)."""
        timeout = httpx.Timeout(attempt_s, connect=min(self._connect_timeout_s, attempt_s))
        span = start_client_span(self._tracer, method, url, _server_of(endpoint.base_url), headers, number - 1)
        try:
            async with asyncio.timeout(attempt_s):
                response = unbound(
                    await self._client.request(method, _parsed(url), timeout=timeout, headers=headers, **kwargs)
                )
        except BaseException as exc:
            end_client_span(span, error=exc, client_input=self._pass_client_errors)
            raise
        end_client_span(span, status=response.status_code, client_input=self._pass_client_errors)
        return response

    def _attempt_failed(self, endpoint: Endpoint, attempts: int, reason: str, *, eject: bool = True) -> None:
        if eject:
            self.balancer.failed(endpoint)
        span = trace.get_current_span()
        span.add_event(
            Attr.ATTEMPT_FAILED_EVENT, {Attr.DOWNSTREAM_ENDPOINT: endpoint.base_url, Attr.ERROR_TYPE: reason}
        )
        self._annotate(endpoint, attempts)

    def _timed_out(self, detail: str, request_deadline: bool) -> PipelineError:
        """``detail``: which call (and what cut it), for the log."""
        if request_deadline:
            return DeadlineExceeded(f"the request's deadline passed while waiting for {self.name}", detail=detail)
        return DownstreamTimeout(f"{self.name} did not answer in time", detail=detail)

    @staticmethod
    def _annotate(endpoint: Endpoint, attempts: int) -> None:
        """On the caller's current span (the hop's stage): which replica answered, after how many tries."""
        span = trace.get_current_span()
        span.set_attribute(Attr.DOWNSTREAM_ENDPOINT, endpoint.base_url)
        span.set_attribute(Attr.DOWNSTREAM_ATTEMPTS, attempts)

    def _error_from(self, response: httpx.Response) -> PipelineError:
        status = response.status_code
        try:
            err = response.json()["error"]
            code, message, service = err["code"], err["message"], err.get("service", self.name)
        except (ValueError, KeyError, TypeError):
            code, message, service = "downstream_error", response.text[:200] or f"HTTP {status}", self.name
        if (status < 500 and self._pass_client_errors) or status in (503, 504):
            return PipelineError(message, status=status, code=code, service=service)
        return BadGateway(f"{self.name} answered HTTP {status}: {message}", service=None)


def unbound(response: httpx.Response) -> httpx.Response:
    """``response`` without httpx's reference cycle. httpx wraps a response's stream in one that
    points back at the response (to set ``elapsed`` when it closes): the response, its request and
    the request's body (a 9 MB upload on postprocess's hop) then live until the cyclic garbage
    collector runs, not until their last use. 100 uploads of 9 MB left postprocess 30–140 MiB larger
    at random (encode/httpx#3733). The body has been read and the stream closed (``elapsed`` set):
    the read bytes stand in for the stream."""
    response.stream = httpx.ByteStream(response.content)
    return response


@functools.lru_cache(maxsize=256)
def _parsed(url: str) -> httpx.URL:
    """``url`` parsed once: httpx parses a string URL on every request (~25 µs of the ~60 its
    request building costs, microbenchmark), and a hop calls the same few replica URLs."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=256)
def _server_of(base_url: str) -> tuple[str, int]:
    """``server.address`` and ``server.port`` of a replica's base URL: its address, or without
    resolution the URL's host."""
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _described(exc: BaseException) -> str:
    """An exception for the operator's log: its class, and its words when it has some."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_policy_from_settings(name: str, settings: DownstreamSettings, max_attempts: int) -> RetryPolicy:
    """The retry policy of calls to ``name``: ``max_attempts`` (the hop's own setting), the retry
    budget from the shared settings. preprocess's HTTP and gRPC clients of the model share one."""
    return RetryPolicy(name, max_attempts, RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min))


def downstream_from_settings(
    name: str,
    base_url: str,
    settings: DownstreamSettings,
    tracer_provider: trace.TracerProvider,
    *,
    retry: RetryPolicy,
    **call_options: Any,
) -> Downstream:
    """The one way a service builds its client for the next hop: balancing, ejection and connect
    timeout from the shared settings; ``retry`` (``retry_policy_from_settings``) and
    ``call_options`` (timeouts, which answers to retry, a test transport) are the hop's own."""
    return Downstream(
        name,
        base_url,
        connect_timeout_s=settings.downstream_connect_timeout_s,
        tracer_provider=tracer_provider,
        retry=retry,
        resolve_interval_s=settings.downstream_resolve_interval_s,
        eject_s=settings.downstream_eject_s,
        http_transport=settings.downstream_http_transport,
        **call_options,
    )
