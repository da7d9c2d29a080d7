"""Spans for less: the OpenTelemetry SDK's ``TracerProvider``, ``Tracer`` and ``Span`` with the
paths every span takes rewritten, for the SDK's default sampling (``parentbased_always_on``).

The SDK spends ~40 µs on a span (docs/profiling.md): asking the sampler through three objects for
a decision the default always makes the same way, checking each plain attribute value through
a recursive cleaner under a lock, and copying the finished span into a new ``ReadableSpan`` for
the processors. A request makes 14 spans across the chain, all of them exported (issue 25). Here:

- ``LeanTracer.start_span`` takes the default sampler's decision itself (sample, unless the parent
  was not sampled), then builds the span's fields directly; anything else (another sampler, links
  at start, the exception options turned off, a disabled tracer, an unsampled parent) takes the
  SDK's own path.
- ``SpanAttributes`` stores a new ``str``, ``int``, ``float`` or ``bool`` value as is when there is
  room and no length limit — what the SDK's cleaner would store; anything else goes through it.
- A finished ``LeanSpan`` goes to the processors itself: every mutator refuses once it has ended,
  so it is as frozen as the SDK's copy.

Everything else (events, links, status, exceptions, limits, processors, exporters, shutdown) is
the SDK's. The spans are the SDK's ``Span`` type and export byte for byte as the SDK's would
(tests/unit/ml_pipeline/observability/test_spans.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span, Tracer, TracerProvider, sampling
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

log = logging.getLogger(__name__)

_PLAIN_VALUES = frozenset({str, int, float, bool})
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


class SpanAttributes(BoundedAttributes):
    """The SDK's ``BoundedAttributes`` (count limit, oldest dropped, frozen at the span's end) with
    a plain new value stored without the cleaner: it would return it unchanged."""

    def __init__(self, maxlen: int | None, max_value_len: int | None, attributes: types.Attributes = None):
        # BoundedAttributes.__init__'s fields, without cleaning the initial values as a mapping
        self._dict: dict[str, types.AnyValue] = {}
        self.maxlen = maxlen
        self.dropped = 0
        self.max_value_len = max_value_len
        self._lock = threading.Lock()
        self._immutable = False
        if attributes:
            self._set_items(attributes)

    def __setitem__(self, key: str, value: types.AnyValue) -> None:
        stored = self._dict
        if (
            type(value) in _PLAIN_VALUES
            and type(key) is str
            and key
            and key not in stored  # the SDK moves a replaced key to the end
            and (self.maxlen is None or len(stored) < self.maxlen)
            and (self.max_value_len is None or type(value) is not str)
            and not self._immutable
        ):
            stored[key] = value
        else:
            super().__setitem__(key, value)

    def _set_items(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Each through ``__setitem__``: an invalid key or value is cleaned or dropped (and counted) there."""
        for key, value in attributes.items():
            self[key] = value


class LeanSpan(Span):
    """An SDK span built by ``LeanTracer`` and handed to the processors as it is when it ends."""

    def __init__(  # pylint: disable=super-init-not-called  # its fields are set here, cheaply
        self,
        tracer: Tracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        record_end_metrics: Any,
    ) -> None:
        limits = tracer._span_limits  # the tracer's, as the SDK passes them
        # ReadableSpan's fields
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = tracer._instrumentation_scope
        self._parent = parent
        self._start_time: int | None = None
        self._end_time: int | None = None
        self._attributes: SpanAttributes = SpanAttributes(
            limits.max_span_attributes, limits.max_span_attribute_length, attributes
        )
        self._events = BoundedList(limits.max_events)
        self._links = BoundedList(limits.max_links)
        self._resource = tracer.resource
        self._status = _UNSET
        # Span's fields
        self._sampler = tracer.sampler
        self._trace_config = None
        self._record_exception = True
        self._set_status_on_exception = True
        self._span_processor = tracer.span_processor
        self._limits = limits
        self._lock = threading.Lock()
        self._record_end_metrics = record_end_metrics

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                log.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._attributes._immutable = True  # as the SDK freezes them
        if self._record_end_metrics:
            self._record_end_metrics()
        self._span_processor._on_ending(self)
        self._span_processor.on_end(self)  # itself, not a copy: ended, nothing changes it any more


class LeanTracer(Tracer):
    """The SDK's tracer, with the default sampler's spans started by ``LeanSpan``."""

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        parent = trace_api.get_current_span(context).get_span_context()
        sampled_parent = parent.is_valid and parent.trace_flags.sampled
        if (
            links
            or not (record_exception and set_status_on_exception)
            or self.sampler is not sampling.DEFAULT_ON
            or (parent.is_valid and not sampled_parent)
            or not self._is_enabled()
        ):
            return super().start_span(
                name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
            )
        parent_context: SpanContext | None = parent
        if sampled_parent:  # the default sampler follows the parent
            trace_id, random_id, trace_state = parent.trace_id, parent.trace_flags.random_trace_id, parent.trace_state
        else:  # a root: always sampled
            parent_context = None
            trace_id, random_id = self.id_generator.generate_trace_id(), self.id_generator.is_trace_id_random()
            trace_state = None  # the default (empty) trace state, as the SDK's sampler leaves it
        span_context = SpanContext(
            trace_id,
            self.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=_SAMPLED_RANDOM if random_id else _SAMPLED,
            trace_state=trace_state,
        )
        record_end_metrics = self._tracer_metrics.start_span(parent_context, sampling.Decision.RECORD_AND_SAMPLE)
        span = LeanSpan(self, name, span_context, parent_context, kind, attributes, record_end_metrics)
        span.start(start_time=start_time, parent_context=context)
        return span


class LeanTracerProvider(TracerProvider):
    """The SDK's provider, whose tracers are ``LeanTracer``."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace_api.Tracer:
        tracer = super().get_tracer(*args, **kwargs)
        if type(tracer) is Tracer:  # not the no-op tracer of a disabled SDK
            # The same object, cached by the provider, with start_span ours (LeanTracer adds no state).
            tracer.__class__ = LeanTracer
        return tracer
