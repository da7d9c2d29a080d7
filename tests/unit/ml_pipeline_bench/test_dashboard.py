"""The dashboard drawn from Prometheus (ml_pipeline_bench.dashboard): every panel queried as Grafana
would, legends from Grafana's format, a PNG with every panel in place."""

import json

import httpx

from ml_pipeline_bench import dashboard
from support.data import ROOT

BOARD = json.loads((ROOT / "grafana" / "dashboards" / "ml-pipeline.json").read_text())


def test_grafana_variables_and_legends_are_resolved():
    assert dashboard.expand("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert dashboard.legend("{{service}} {{ route }}", {"service": "model", "route": "/predict"}) == "model /predict"
    assert dashboard.legend("", {"__name__": "up", "job": "model"}) == "job=model"


def test_every_panel_is_queried_and_drawn(tmp_path):
    asked = []

    def prometheus(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query_range"
        query = request.url.params["query"]
        asked.append(query)
        assert "$__" not in query  # Grafana's variables resolved before Prometheus sees them
        series = [{"metric": {"service": "model", "route": "/predict"}, "values": [[1, "1"], [2, "2"], [3, "NaN"]]}]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": series}})

    out = tmp_path / "dashboard.png"
    client = httpx.Client(transport=httpx.MockTransport(prometheus))
    drawn = dashboard.render(BOARD, "http://prometheus:9090", out, client, minutes=5)
    timeseries = [p for p in BOARD["panels"] if p["type"] == "timeseries"]
    assert drawn == len(timeseries) > 10
    assert len(asked) == sum(len(p["targets"]) for p in timeseries)
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 50_000


def test_a_panel_without_data_says_so(tmp_path):
    def empty(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": []}})

    client = httpx.Client(transport=httpx.MockTransport(empty))
    assert dashboard.render(BOARD, "http://p:9090", tmp_path / "d.png", client) == 0
