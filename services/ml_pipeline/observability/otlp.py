"""Spans to the collector over OTLP/HTTP, encoded here: the SDK's encoder builds a protobuf object per
span, attribute and value and hashes the resource (a JSON dump of its attributes) for every span,
~70-100 µs of CPU a span here, more than making the span. ``encode_spans`` writes the same
``ExportTraceServiceRequest`` bytes directly, field by field in field-number order as protobuf
serializes them (tests/unit/ml_pipeline/observability/test_otlp.py compares them byte for byte with
the SDK's); ``OtlpSpanExporter`` sends them with the SDK exporter's own HTTP client (its retries,
timeout, compression and headers).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger("ml_pipeline.otlp")

# Wire types: varint, 64-bit, length-delimited, 32-bit.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Span.flags (opentelemetry.proto.trace.v1.SpanFlags): whether the parent is remote is known, and is it.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_pack_i64 = struct.Struct("<Q").pack
_pack_i32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= 0xFFFF_FFFF_FFFF_FFFF  # a negative int64 is its two's complement: ten bytes (range: _int64)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    size = len(payload)
    if field < 16 and size < 0x80:  # one byte of tag, one of length: most fields
        return bytes((field << 3 | _LEN, size)) + payload
    return _tag(field, _LEN) + _varint(size) + payload


def _str_field(field: int, text: str | None) -> bytes:
    return _len_field(field, text.encode()) if text else b""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue``: string 1, bool 2, int 3, double 4, array 5, key-value list 6, bytes 7."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len_field(1, value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"integer {value} does not fit an int64")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _len_field(7, value)
    if isinstance(value, Sequence):
        return _len_field(5, b"".join([_len_field(1, _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _len_field(6, b"".join([_len_field(1, _key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


# Encoded attributes: most repeat on every request (methods, routes, shapes, model names, replicas),
# so most cost a dict lookup. Only values whose equality is their encoding's (strings, ints, bools
# and tuples of them, by type: 1 == 1.0 == True in Python) and short ones (a client picks the path,
# an exception's message is long). Bounded: once full, new ones are encoded each time.
_KEY_VALUES_MAX = 4096
_CACHED_STR_MAX = 256
_CACHEABLE = (str, int, bool)
_key_values: dict[tuple[Any, ...], bytes] = {}


def _tuple_cache_key(key: str, value: Any) -> tuple[Any, ...] | None:
    """The cache key of a short tuple of cacheable values (its types too: ``(1,) == (True,)``);
    None for anything else. Single values are keyed in ``_attribute_fields``."""
    if type(value) is tuple and len(value) <= 8 and all(type(v) in _CACHEABLE for v in value):
        return (
            (key, tuple, value, tuple(type(v) for v in value))
            if all(type(v) is not str or len(v) <= _CACHED_STR_MAX for v in value)
            else None
        )
    return None


def _key_value(key: str, value: Any) -> bytes:
    return _str_field(1, key) + _len_field(2, _any_value(value))


def _attribute_fields(field: int, key: str, value: Any) -> bytes:
    """One attribute as a ``KeyValue`` in ``field``, framed: from the cache when it repeats."""
    kind = type(value)
    if kind in _CACHEABLE and (kind is not str or len(value) <= _CACHED_STR_MAX):  # most: one lookup
        cache_key: tuple[Any, ...] = (field, key, kind, value)
    else:
        value_key = _tuple_cache_key(key, value)
        if value_key is None:
            return _len_field(field, _key_value(key, value))
        cache_key = (field, *value_key)
    encoded = _key_values.get(cache_key)
    if encoded is None:
        encoded = _len_field(field, _key_value(key, value))
        if len(_key_values) < _KEY_VALUES_MAX:
            _key_values[cache_key] = encoded
    return encoded


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    """The attributes as repeated ``KeyValue`` fields; one OTLP cannot carry is left out (and
    logged), as the SDK's encoder does, so it cannot fail the batch it is in."""
    if not attributes:
        return b""
    encoded = []
    for key, value in _items(attributes):
        try:
            encoded.append(_attribute_fields(field, key, value))
        except (TypeError, ValueError, UnicodeError) as exc:
            log.warning("span attribute %r left out of the export: %s", key, exc)
    return b"".join(encoded)


def _items(attributes: Mapping[str, Any]) -> Any:
    """The pairs of a span's attributes: the SDK's ``BoundedAttributes`` (behind a read-only proxy,
    the ``attributes`` property) read from its dict, not key by key through ``Mapping``."""
    stored = getattr(attributes, "_dict", None)
    return stored.items() if type(stored) is dict else attributes.items()


def _count(field: int, count: int) -> bytes:
    return _tag(field, _VARINT) + _varint(count) if count else b""


def _trace_state(field: int, trace_state: Any) -> bytes:
    return _str_field(field, ",".join(f"{k}={v}" for k, v in trace_state.items()) if trace_state else "")


def _flags(field: int, remote: bool) -> bytes:
    return _tag(field, _I32) + _pack_i32(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))


_SPAN_FLAGS = {remote: _flags(16, remote) for remote in (False, True)}  # by whether the parent is remote
_SPAN_KIND = {kind: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}  # the API's INTERNAL is 0, OTLP's 1
_STATUS_CODE = {code: _count(3, code.value) for code in StatusCode}


def _span(span: ReadableSpan) -> bytes:
    """A ``Span`` message: its fields 1-16 in order."""
    ctx = span.get_span_context()
    assert ctx is not None  # a finished SDK span always has one
    parent = span.parent
    parts = [
        b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big") + b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),
        _trace_state(3, ctx.trace_state),
        b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
        _str_field(5, span.name),
        _SPAN_KIND[span.kind],
        b"\x39" + _pack_i64(span.start_time) if span.start_time else b"",
        b"\x41" + _pack_i64(span.end_time) if span.end_time else b"",
        _attributes(9, span._attributes),  # the SDK's own, not its proxy
        _count(10, span.dropped_attributes),
    ]
    for event in span.events:
        parts.append(
            _len_field(
                11,
                b"\x09"
                + _pack_i64(event.timestamp)
                + _str_field(2, event.name)
                + _attributes(3, event.attributes)
                + _count(4, event.dropped_attributes),
            )
        )
    parts.append(_count(12, span.dropped_events))
    for link in span.links:
        parts.append(
            _len_field(
                13,
                b"\x0a\x10"
                + link.context.trace_id.to_bytes(16, "big")
                + b"\x12\x08"
                + link.context.span_id.to_bytes(8, "big")
                + _attributes(4, link.attributes)
                + _count(5, link.dropped_attributes)
                + _flags(6, link.context.is_remote),
            )
        )
    parts.append(_count(14, span.dropped_links))
    status = span.status
    parts.append(_len_field(15, _str_field(2, status.description) + _STATUS_CODE[status.status_code]))
    parts.append(_SPAN_FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The ``ExportTraceServiceRequest`` of ``spans``: grouped by resource, then instrumentation
    scope, in the order they first appear (as the SDK's encoder groups them)."""
    by_resource: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = by_resource.setdefault(id(resource), (resource, {}))  # one provider, one Resource object
        scopes.setdefault(span.instrumentation_scope, []).append(_len_field(2, _span(span)))
    out = []
    for resource, scopes in by_resource.values():
        scope_spans = []
        for scope, encoded in scopes.items():
            scope_fields = b""
            if scope is not None:
                scope_fields = (
                    _str_field(1, scope.name) + _str_field(2, scope.version) + _attributes(3, scope.attributes)
                )
            scope_message = _len_field(1, scope_fields)
            schema = _str_field(3, scope.schema_url) if scope is not None else b""
            scope_spans.append(_len_field(2, scope_message + b"".join(encoded) + schema))
        resource_message = _len_field(1, _attributes(1, resource.attributes))
        out.append(_len_field(1, resource_message + b"".join(scope_spans) + _str_field(3, resource.schema_url)))
    return b"".join(out)


class OtlpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, with the request body from ``encode_spans``."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            body = encode_spans(spans)
        except Exception as exc:  # a span name, event or scope OTLP cannot carry
            log.error("could not encode %d spans for export: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        if 0 < self._max_request_size < len(body):  # as the SDK's exporter: the collector would refuse it
            log.warning(
                "dropping %d spans: %d bytes is over the %d-byte request limit",
                len(spans),
                len(body),
                self._max_request_size,
            )
            return SpanExportResult.FAILURE
        result = self._client.export(body)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
