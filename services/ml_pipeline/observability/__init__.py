"""Telemetry, one package: tracing, the request and stage spans, structured logs and the
Prometheus metrics every service and replica exposes."""
