"""The one-command smoke run (tests/smoke/smoke.py, compose's `smoke` service): it passes on a
working stack and fails with a one-line reason on each thing it checks, here against small fake
servers standing in for the entry, Jaeger and Prometheus."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from support.data import COFFEE_JPG, ROOT

spec = importlib.util.spec_from_file_location("smoke", ROOT / "tests" / "smoke" / "smoke.py")
smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smoke)

TRACE = "0af7651916cd43dd8448eb211c80319c"


@contextlib.contextmanager
def fake_stack(label="espresso", services=("postprocess", "preprocess", "model"), counted=3.0):
    """One server answering as the entry (/finalize), Jaeger (/api/traces/…) and Prometheus (/api/v1/query)."""
    seen: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            seen["upload"] = self.rfile.read(int(self.headers["Content-Length"]))
            seen["content-type"] = self.headers["Content-Type"].encode()
            self.answer({"label": label, "score": 0.95, "trace_id": TRACE})

        def do_GET(self):
            if self.path.startswith("/api/traces/"):
                processes = {f"p{i}": {"serviceName": s} for i, s in enumerate(services)}
                self.answer({"data": [{"traceID": TRACE, "processes": processes}]})
            else:
                result = [{"value": [0, str(counted)]}] if counted else []
                self.answer({"status": "success", "data": {"result": result}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()


def run(url: str) -> str:
    return smoke.smoke(url, url, url, COFFEE_JPG.read_bytes(), wait_s=0.5)


def test_a_working_stack_passes_and_the_upload_is_the_photo():
    with fake_stack() as (url, seen):
        line = run(url)
    assert line.startswith("smoke: ok") and TRACE in line
    assert COFFEE_JPG.read_bytes() in seen["upload"] and seen["content-type"].startswith(b"multipart/form-data")


@pytest.mark.parametrize(
    "broken, reason",
    [
        ({"label": "teapot"}, "classified as 'teapot'"),
        ({"services": ("postprocess", "preprocess")}, "no spans from model"),
        ({"counted": 0}, "has not counted the request"),
    ],
)
def test_each_check_fails_with_a_one_line_reason(broken, reason):
    with fake_stack(**broken) as (url, _), pytest.raises(smoke.SmokeFailure) as failure:
        run(url)
    assert reason in str(failure.value) and "\n" not in str(failure.value)


def test_an_unreachable_entry_is_a_failure_not_a_crash(monkeypatch, capsys):
    monkeypatch.setenv("SMOKE_ENTRY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SMOKE_PHOTO", str(COFFEE_JPG))
    assert smoke.main() == 1
    assert capsys.readouterr().err.startswith("smoke: FAILED: http://127.0.0.1:9/finalize could not be reached")


def test_compose_runs_it_in_its_own_profile_after_the_entry_is_healthy():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["smoke"]
    assert service["profiles"] == ["smoke"]
    assert service["depends_on"]["edge"] == {"condition": "service_healthy"}
    assert service["entrypoint"] == ["python", "/smoke/smoke.py"]
    for volume in service["volumes"]:
        assert (ROOT / volume.split(":")[0]).is_file(), volume
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"] and service["user"] != "0"
    readme = (ROOT / "README.md").read_text()
    assert "docker compose --profile smoke up --build --abort-on-container-exit --exit-code-from smoke" in readme
