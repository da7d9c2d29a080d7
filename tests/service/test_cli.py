"""`ml-pipeline serve`: the three services as local processes, stopped cleanly by Ctrl-C, and
`ml-pipeline-bench run` driving them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from support.apps import free_port
from support.data import COFFEE_JPG

pytestmark = pytest.mark.slow


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def three_free_ports(taken: dict[str, int] | None = None) -> dict[str, int]:
    """Three consecutive free ports, as ``serve --base-port`` takes them (not 5001–5003: those may be a running stack's),
    none of them ``taken``."""
    for _ in range(50):
        base = free_port()
        ports = {"preprocess": base, "model": base + 1, "postprocess": base + 2}
        clash = set(ports.values()) & set((taken or {}).values())
        if base + 2 < 65536 and not clash and not any(port_in_use(base + i) for i in (1, 2)):
            return ports
    raise AssertionError("no three consecutive free ports")


@pytest.mark.parametrize("http_server", ["uvicorn", "granian"])  # granian: HTTP_SERVER's A/B alternative
def test_serve_runs_the_chain_and_stops_on_ctrl_c(tmp_path, http_server):
    ports = three_free_ports()
    metrics_ports = three_free_ports(taken=ports)  # not 9464–9466: a concurrent test run may hold them
    env = {
        **os.environ,
        "MODEL_BACKEND": "random",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "GRPC_PORT": "0",
        "HTTP_SERVER": http_server,
    }
    env.pop("MODEL_URL", None)
    env.pop("PREPROCESS_URL", None)
    log = (tmp_path / "serve.log").open("w+")
    # Started with SIGINT ignored, as a shell starts a background job (`ml-pipeline serve &`):
    # Ctrl-C/SIGINT must still stop it.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ml_pipeline",
            "serve",
            "--base-port",
            str(ports["preprocess"]),
            "--metrics-base-port",
            str(metrics_ports["preprocess"]),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{ports['postprocess']}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.3)
        r = httpx.post(
            f"http://127.0.0.1:{ports['postprocess']}/finalize",
            files={"file": ("test.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["backend"] == "random"
        trace_id = r.json()["trace_id"]
        # Metrics: each process's on its own internal port, none on the ports that serve requests.
        for service, port in ports.items():
            assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404, service
            scraped = httpx.get(
                f"http://127.0.0.1:{metrics_ports[service]}/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                timeout=5,
            )
            assert scraped.headers["content-type"].startswith("application/openmetrics-text"), service
            build = [
                s
                for f in text_string_to_metric_families(scraped.text)
                for s in f.samples
                if s.name.endswith("build_info")
            ]
            assert [s.labels["service"] for s in build] == [service]  # this process's own
            # the process that serves the requests (granian's worker, not its parent) counts them
            handled = [
                s.value
                for f in text_string_to_metric_families(scraped.text)
                for s in f.samples
                if s.name == "ml_pipeline_requests_total"
            ]
            assert sum(handled) >= 1, (service, handled)
            if service == "postprocess":  # the request's duration bucket carries its trace id
                assert f'trace_id="{trace_id}"' in scraped.text
        # The load generator against the real servers: two runs, every request answered.
        results = tmp_path / "bench.json"
        bench = subprocess.run(
            [
                sys.executable,
                "-m",
                "ml_pipeline_bench",
                "run",
                f"http://127.0.0.1:{ports['postprocess']}/finalize",
                "-c",
                "1,2",
                "-n",
                "6",
                "--warmup",
                "1",
                "--image",
                str(COFFEE_JPG),
                "--out",
                str(results),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bench.returncode == 0, bench.stderr
        runs = json.loads(results.read_text())["runs"]
        assert [(run["concurrency"], run["requests"], run["errors"]) for run in runs] == [(1, 6, 0), (2, 6, 0)]
        assert "model.inference" in runs[0]["stages_mean_ms"] and "| 2 | 6 | 0 |" in bench.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=40)
    log.seek(0)
    output = log.read()
    assert code == 0, output
    assert not [p for p in [*ports.values(), *metrics_ports.values()] if port_in_use(p)], "a service outlived Ctrl-C"
    # One grep follows the request through all three services' logs.
    lines = [line for line in output.splitlines() if trace_id in line]
    assert {svc for svc in ports if any(f'"service": "{svc}"' in line for line in lines)} == set(ports)
    if http_server == "uvicorn":
        assert output.count("Application shutdown complete") == 3
