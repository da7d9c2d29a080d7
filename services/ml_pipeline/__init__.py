"""Shared code of the ml-pipeline services: settings, telemetry, tensor codec, HTTP client, errors."""

__version__ = "0.1.0"
