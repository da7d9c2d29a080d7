"""The one HTTP client a service uses to call the next one in the chain.

Created once at startup (connection pooling, keep-alive), instrumented so every call carries W3C
``traceparent``, with timeouts on every phase. Transport failures and downstream errors become
``PipelineError``s with a clear status: unreachable → 503, too slow → 504, a downstream 5xx →
502, and (for hops that carry the client's own input) a downstream 4xx passes through unchanged.
"""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

from ml_pipeline.errors import BadGateway, DownstreamTimeout, DownstreamUnavailable, PipelineError
from ml_pipeline.telemetry import instrument_client


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
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """``pass_client_errors``: a downstream 4xx is the end client's fault (it rejected their
        upload) and is returned as is; otherwise a 4xx means we sent something wrong → 502."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._pass_client_errors = pass_client_errors
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
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
        """Whether the downstream's ``/ready`` answers 200, and why not."""
        try:
            with suppress_instrumentation():  # probes are not traced (like the /ready routes themselves)
                response = await self._client.get("/ready", timeout=timeout_s)
        except httpx.HTTPError as exc:
            return False, f"{self.name} unreachable at {self.base_url}: {type(exc).__name__}"
        if response.status_code != 200:
            return False, f"{self.name} not ready (HTTP {response.status_code})"
        return True, f"{self.name} ready"

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.ConnectTimeout:
            raise DownstreamUnavailable(f"{self.name} did not accept a connection at {url} in time") from None
        except httpx.TimeoutException:
            raise DownstreamTimeout(f"{self.name} did not answer {url} in time") from None
        except httpx.ConnectError as exc:
            raise DownstreamUnavailable(f"{self.name} unreachable at {url}: {exc}") from None
        except httpx.TransportError as exc:
            raise DownstreamUnavailable(f"{self.name} connection failed at {url}: {type(exc).__name__}: {exc}") from None

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
