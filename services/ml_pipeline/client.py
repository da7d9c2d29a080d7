"""The one HTTP client a service uses to call the next one in the chain.

Created once at startup (connection pooling, keep-alive), instrumented so every call carries W3C
``traceparent``, with timeouts on every phase. Requests are spread over every replica behind the
downstream's name (``ml_pipeline.balancer``: re-resolved every few seconds, least outstanding
requests, failing replicas ejected and retried later). A connection failure — nothing was
processed — is retried on another replica; so are the statuses a hop names as retryable (the
model's 5xx: inference is a pure function of the tensor, so a second attempt is safe). Attempts
are bounded and share one deadline.

Transport failures and downstream errors become ``PipelineError``s with a clear status:
unreachable → 503, too slow → 504, a downstream 5xx → 502, and (for hops that carry the
client's own input) a downstream 4xx passes through unchanged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

from ml_pipeline.balancer import Balancer, Endpoint, Resolver, resolve_dns
from ml_pipeline.errors import BadGateway, DownstreamTimeout, DownstreamUnavailable, PipelineError
from ml_pipeline.telemetry import instrument_client

RETRYABLE_5XX = frozenset({500, 502, 503, 504})


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
        max_attempts: int = 1,
        retry_statuses: frozenset[int] = frozenset(),
        resolve_interval_s: float = 2.0,
        eject_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
    ):
        """``pass_client_errors``: a downstream 4xx is the end client's fault (it rejected their
        upload) and is returned as is; otherwise a 4xx means we sent something wrong → 502.
        ``retry_statuses``: answers worth another replica (only for idempotent calls).
        ``transport`` (tests wiring apps in-process): the URL is used as is, not resolved, unless
        a ``resolver`` is given (default: DNS)."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._pass_client_errors = pass_client_errors
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_attempts = max_attempts
        self._retry_statuses = retry_statuses
        self.balancer = Balancer(
            self.base_url,
            resolve_interval_s=resolve_interval_s,
            eject_s=eject_s,
            resolver=resolver or (None if transport is not None else resolve_dns),
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            transport=transport,
        )
        instrument_client(self._client, tracer_provider)

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
            return False, f"{self.name}: {self.base_url} resolves to no address"
        # The first ready replica settles it: a dead replica's address may take the whole
        # timeout to fail, which would make this probe time out for its own caller.
        reasons = []
        for probe in asyncio.as_completed([self._probe(e, timeout_s) for e in endpoints]):
            ok, reason = await probe
            if ok:
                return True, f"{self.name} ready ({len(endpoints)} replicas known)"
            reasons.append(reason)
        return False, reasons[0]

    async def _probe(self, endpoint: Endpoint, timeout_s: float) -> tuple[bool, str]:
        try:
            with suppress_instrumentation():  # probes are not traced (like the /ready routes themselves)
                response = await self._client.get(f"{endpoint.base_url}/ready", timeout=timeout_s)
        except httpx.HTTPError as exc:
            return False, f"{self.name} unreachable at {endpoint.base_url}: {type(exc).__name__}"
        if response.status_code != 200:
            return False, f"{self.name} not ready (HTTP {response.status_code})"
        return True, "ready"

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        await self.balancer.ensure_fresh()
        deadline = time.monotonic() + self._timeout_s
        tried: set[Endpoint] = set()
        failure: PipelineError | None = None
        response: httpx.Response | None = None
        attempts = 0
        while attempts < self._max_attempts:
            endpoint = self.balancer.pick(exclude=tried)
            remaining = deadline - time.monotonic()
            if endpoint is None or remaining <= 0:
                break
            attempts += 1
            tried.add(endpoint)
            url = f"{endpoint.base_url}{path}"
            timeout = httpx.Timeout(remaining, connect=min(self._connect_timeout_s, remaining))
            endpoint.outstanding += 1
            try:
                response = await self._client.request(method, url, timeout=timeout, **kwargs)
            except (httpx.ConnectTimeout, httpx.ConnectError):
                self.balancer.failed(endpoint)
                failure = DownstreamUnavailable(f"{self.name} unreachable at {url}")
                continue
            except httpx.TimeoutException:  # the deadline is used up: no time for another attempt
                raise DownstreamTimeout(f"{self.name} did not answer {url} in time") from None
            except httpx.TransportError as exc:  # e.g. the replica died mid-request
                self.balancer.failed(endpoint)
                failure = DownstreamUnavailable(f"{self.name} connection failed at {url}: {type(exc).__name__}")
                continue
            finally:
                endpoint.outstanding -= 1
            self._annotate(endpoint, attempts)
            if response.status_code in self._retry_statuses:
                self.balancer.failed(endpoint)
                continue
            self.balancer.succeeded(endpoint)
            return response
        if response is not None and response.status_code in self._retry_statuses:
            return response  # the last replica's error answer, for the caller to report
        if failure is not None:
            raise failure
        if not self.balancer.endpoints:
            raise DownstreamUnavailable(f"{self.name}: {self.base_url} resolves to no address")
        raise DownstreamTimeout(f"{self.name}: no answer within {self._timeout_s:g} s")

    @staticmethod
    def _annotate(endpoint: Endpoint, attempts: int) -> None:
        """On the caller's current span (the hop's stage): which replica answered, after how many tries."""
        span = trace.get_current_span()
        span.set_attribute("downstream.endpoint", endpoint.base_url)
        span.set_attribute("downstream.attempts", attempts)

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
