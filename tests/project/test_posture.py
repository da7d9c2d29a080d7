"""The shipped deployment files, read as they are: private by default, no lifecycle API, bounded
span-metric cardinality (the stack tests check the running side)."""

import os
import re
import stat
import subprocess
import sys

import yaml

from support.data import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PRIVATE = "${BIND_ADDRESS:-127.0.0.1}:"


def test_every_published_port_binds_to_localhost_unless_bind_address_says_otherwise():
    published = {name: svc.get("ports", []) for name, svc in COMPOSE["services"].items()}
    assert published["edge"] and published["preprocess"]
    assert not published["postprocess"]  # behind the edge: only the debug overlay publishes it
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith(PRIVATE), f"{name} publishes {port!r} on every interface"


def test_model_replicas_are_not_published_except_by_the_debug_overlay():
    assert "ports" not in COMPOSE["services"]["model"]
    debug = yaml.safe_load((ROOT / "docker-compose.debug.yml").read_text())
    assert debug["services"]["model"]["ports"] == ["127.0.0.1::5000", "127.0.0.1::8001"]
    assert debug["services"]["postprocess"]["ports"] == ["127.0.0.1::5000"]


def test_prometheus_has_no_lifecycle_api():
    assert not any("lifecycle" in arg for arg in COMPOSE["services"]["prometheus"]["command"])


def test_span_metrics_have_a_cardinality_limit():
    collector = yaml.safe_load((ROOT / "otel" / "otelcol-config.yml").read_text())
    assert 0 < collector["connectors"]["spanmetrics"]["aggregation_cardinality_limit"] <= 5000


def test_grafana_reads_a_generated_admin_password_never_a_committed_one():
    services = COMPOSE["services"]
    grafana = services["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/grafana/")
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"  # anonymous visitors only look
    assert services["grafana"]["depends_on"] == {"grafana-password": {"condition": "service_completed_successfully"}}
    init = services["grafana-password"]
    assert init["read_only"] and init["cap_drop"] == ["ALL"] and init["network_mode"] == "none"
    assert init["user"] == "472:0"  # not root: Grafana's own user writes Grafana's secret
    assert "grafana-secrets:/run/secrets/grafana:ro" in services["grafana"]["volumes"]
    committed = (ROOT / ".env").read_text() + (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"^\s*GRAFANA_ADMIN_PASSWORD\s*=", committed, re.M), "a Grafana password is committed"
    assert "GRAFANA_ADMIN_PASSWORD:-admin" not in committed


SCRIPT = ROOT / "grafana" / "admin-password.py"


def _admin_password(secret, *args, password=None):
    env = {**os.environ, "GRAFANA_SECRET_FILE": str(secret)}
    env.pop("GRAFANA_ADMIN_PASSWORD", None)
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_grafana_password_is_generated_once_printed_once_and_kept(tmp_path):
    secret = tmp_path / "grafana-admin-password"
    first = _admin_password(secret)
    assert first.returncode == 0, first.stderr
    password = secret.read_text()
    assert len(password) >= 20 and password in first.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o400  # Grafana's user only
    again = _admin_password(secret)
    assert again.returncode == 0 and password not in again.stdout and "unchanged" in again.stdout
    assert secret.read_text() == password
    rotated = _admin_password(secret, "--rotate")
    new = secret.read_text()
    assert new != password and new in rotated.stdout
    assert not list(tmp_path.glob("*.partial"))


def test_grafana_password_from_the_environment_is_used_and_never_echoed(tmp_path):
    secret = tmp_path / "grafana-admin-password"
    chosen = "correct-horse-battery-staple"
    run = _admin_password(secret, password=chosen)
    assert run.returncode == 0 and secret.read_text() == chosen and chosen not in run.stdout + run.stderr
    short = _admin_password(secret, password="admin")
    assert short.returncode == 2 and "shorter than 12" in short.stderr
    assert secret.read_text() == chosen


def test_the_services_metrics_port_is_never_published():
    """Metrics (with other clients' trace ids as exemplars) are for Prometheus on the stack's network."""
    debug = yaml.safe_load((ROOT / "docker-compose.debug.yml").read_text())
    for name in ("model", "preprocess", "postprocess"):
        port = str(COMPOSE["services"][name]["environment"]["METRICS_PORT"])
        for compose in (COMPOSE, debug):
            for service, spec in compose["services"].items():
                published = [str(p) for p in spec.get("ports", [])]
                assert not [p for p in published if p.rsplit(":", 1)[-1] == port], f"{service} publishes {port}"
