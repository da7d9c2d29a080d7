"""The performance study's tools: load generator (``load``), soak, report. Not part of the services."""
