"""The shipped deployment files, read as they are: private by default, no lifecycle API, bounded
span-metric cardinality (the stack tests check the running side)."""

import yaml

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PRIVATE = "${BIND_ADDRESS:-127.0.0.1}:"


def test_every_published_port_binds_to_localhost_unless_bind_address_says_otherwise():
    published = {name: svc.get("ports", []) for name, svc in COMPOSE["services"].items()}
    assert published["postprocess"] and published["preprocess"]
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith(PRIVATE), f"{name} publishes {port!r} on every interface"


def test_model_replicas_are_not_published_except_by_the_debug_overlay():
    assert "ports" not in COMPOSE["services"]["model"]
    debug = yaml.safe_load((ROOT / "docker-compose.debug.yml").read_text())
    assert debug["services"]["model"]["ports"] == ["127.0.0.1::5000"]


def test_prometheus_has_no_lifecycle_api():
    assert not any("lifecycle" in arg for arg in COMPOSE["services"]["prometheus"]["command"])


def test_span_metrics_have_a_cardinality_limit():
    collector = yaml.safe_load((ROOT / "otel" / "otelcol-config.yml").read_text())
    assert 0 < collector["connectors"]["spanmetrics"]["aggregation_cardinality_limit"] <= 5000
