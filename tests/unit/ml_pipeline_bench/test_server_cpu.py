"""Server CPU per request (``--cpu-from``), the straightforward yardstick and the model's ``.npy``
body: what the study's "where the CPU goes" and comparison tables are built from."""

import math
import os

import httpx
import numpy as np
import pytest

from ml_pipeline.observability import metrics
from ml_pipeline_bench.load import closed_loop, npy_body, run_http
from ml_pipeline_bench.server_cpu import (
    CpuMeter,
    CpuSource,
    ProcessCpuMeter,
    cpu_seconds,
    per_request_ms,
    process_cpu_seconds,
)
from support.apps import NetworkASGITransport, make_settings, running_chain
from support.data import COFFEE_JPG, ESPRESSO

pytestmark = pytest.mark.anyio


def test_the_cpu_counter_is_read_from_our_services_and_the_collectors_expositions():
    ours = "# HELP process_cpu_seconds Total user and system CPU time\nprocess_cpu_seconds_total 12.5\n"
    collector = 'otelcol_process_cpu_seconds_total{service_instance_id="x",service_name="jaeger"} 3.25\n'
    assert cpu_seconds(ours) == 12.5
    assert cpu_seconds(collector) == 3.25
    with pytest.raises(ValueError):
        cpu_seconds("process_resident_memory_bytes 1e6\n")


def test_a_source_is_a_name_and_a_metrics_url():
    assert CpuSource.parse("model=http://model:9464/metrics") == CpuSource("model", "http://model:9464/metrics")
    for bad in ("model", "=http://x/metrics", "model=model:5000/metrics"):
        with pytest.raises(ValueError):
            CpuSource.parse(bad)


def test_per_request_ms_is_the_difference_over_the_requests_and_nan_where_it_cannot_be():
    got = per_request_ms({"a": 1.0, "b": 2.0, "r": 5.0}, {"a": 1.5, "c": 9.0, "r": 0.5}, 10, expected=["a", "d"])
    assert got["a"] == 50.0
    # read only before or only after, never read, or a counter that restarted: not a number
    assert all(math.isnan(got[name]) for name in ("b", "c", "d", "r"))
    assert per_request_ms({"a": 1.0}, {"a": 2.0}, 0) == {}


async def test_the_meter_sums_every_replica_behind_a_name_from_the_real_metrics_server():
    server = metrics.serve_metrics("127.0.0.1", 0)  # what `ml-pipeline run` starts on METRICS_PORT
    port = server.server_port
    try:

        async def two_replicas(host, p):
            assert (host, p) == ("model", port)
            return ["127.0.0.1", "127.0.0.1"]  # both answered by the same server here

        async def one(host, p):
            return ["127.0.0.1"]

        async with httpx.AsyncClient(timeout=5) as client:
            source = [CpuSource("model", f"http://model:{port}/metrics")]
            both = await CpuMeter(source, client, resolve=two_replicas).read()
            single = await CpuMeter(source, client, resolve=one).read()
    finally:
        server.shutdown()
        server.server_close()
    assert both["model"] > 0 and single["model"] > 0
    assert both["model"] == pytest.approx(2 * single["model"], rel=0.2)  # both replicas counted


async def test_an_address_is_read_as_it_is_not_resolved():
    async def never(host, port):
        raise AssertionError("an address is not resolved (localhost would give ::1 as well)")

    def metrics(request):
        assert request.url.host == "127.0.0.1"
        return httpx.Response(200, text="process_cpu_seconds_total 4.5\n")

    async with httpx.AsyncClient(transport=httpx.MockTransport(metrics)) as client:
        read = await CpuMeter([CpuSource("p", "http://127.0.0.1:7002/metrics")], client, resolve=never).read()
    assert read == {"p": 4.5}


async def test_an_unreadable_source_is_left_out_not_fatal(capsys):
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    async def local(host, port):
        return ["127.0.0.1"]

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        read = await CpuMeter([CpuSource("gone", "http://gone:1/metrics")], client, resolve=local).read()
    assert read == {}
    assert "gone unreadable" in capsys.readouterr().err


async def test_a_closed_loop_reports_each_services_cpu_per_recorded_request():
    class Counting:
        def __init__(self):
            self.names = ["model", "preprocess"]
            self.reads = 0

        async def read(self):
            self.reads += 1
            return {"model": 1.0 if self.reads == 1 else 1.2, "preprocess": 0.5 if self.reads == 1 else 0.6}

    async def send():
        return 200, {}

    meter = Counting()
    result = await closed_loop(send, concurrency=2, requests=10, warmup=3, progress=False, cpu_meter=meter)
    assert meter.reads == 2  # after the warm-up and after the run: the warm-up is not counted
    assert result.summary()["server_cpu_ms_per_request"] == pytest.approx({"model": 20.0, "preprocess": 10.0})


async def test_a_process_meter_reads_the_kernels_counters():
    start = process_cpu_seconds(os.getpid())
    np.linalg.svd(np.random.default_rng(0).standard_normal((400, 400)))  # burn some CPU
    read = await ProcessCpuMeter("me", lambda: [os.getpid()]).read()
    assert read["me"] >= start


async def test_the_npy_body_is_what_the_model_takes_on_predict():
    body, content_type = npy_body(COFFEE_JPG)
    assert content_type == "application/x-npy" and len(body) > 600_000
    async with running_chain(make_settings()) as chain:
        [result] = await run_http(
            "http://model.test/predict",
            COFFEE_JPG,
            [2],
            requests=4,
            warmup=0,
            duration_s=None,
            transport=NetworkASGITransport(app=chain.apps["model"]),
            progress=False,
            body=(body, content_type),
        )
    assert (result.requests, result.errors, result.statuses) == (4, 0, {"200": 4})


@pytest.mark.slow
async def test_the_straightforward_yardstick_classifies_like_the_pipeline_and_meters_its_workers():
    from ml_pipeline.settings import MonolithSettings, load_settings
    from ml_pipeline_bench.load import run_straightforward
    from ml_pipeline_bench.straightforward import StraightforwardPipeline
    from model.convert import ensure_model

    pipeline = StraightforwardPipeline(ensure_model(load_settings(MonolithSettings).model_path), workers=2)
    try:
        top5 = await pipeline(COFFEE_JPG.read_bytes())
    finally:
        pipeline.close()
    assert top5[0][0] == ESPRESSO and top5[0][1] > 0.9
    results = await run_straightforward(COFFEE_JPG, [1, 2], requests=6, duration_s=None, warmup=0, progress=False)
    for summary in (r.summary() for r in results):
        assert (summary["requests"], summary["errors"]) == (6, 0)
        assert summary["server_cpu_ms_per_request"]["workers"] > 0  # its worker processes, not this one


def test_the_report_has_the_side_by_side_ladder_the_cpu_table_and_the_batching_targets(tmp_path):
    from ml_pipeline_bench import report
    from ml_pipeline_bench.load import RunResult, write_results

    def scenario(name, rps_by_c, p50_ms, cpu=None, client_cpu_s=0.0):
        runs = []
        for c, rps in rps_by_c.items():
            run = RunResult(name, c, 100, 0, 100 / rps, [p50_ms] * 100, {}, {"200": 100}, client_cpu_s)
            run.server_cpu_ms = dict(cpu or {})
            runs.append(run)
        write_results(tmp_path / f"{name}.json", runs, {"label": name, "image": "test.jpg", "time": "now"})

    scenario("straightforward", {1: 90, 4: 170}, 11.0, {"workers": 11.0})
    scenario("inprocess", {1: 80, 4: 130}, 12.5, client_cpu_s=1.2)  # 12 ms of CPU per request
    chain_cpu = {"model": 15.7, "preprocess": 8.2, "postprocess": 3.9, "otel-collector": 0.5, "jaeger": 0.4}
    scenario("chain-http", {1: 40, 4: 70}, 24.0, chain_cpu)
    scenario("bare-chain", {1: 75, 4: 102}, 13.5, {"model": 10.5, "preprocess": 4.5, "postprocess": 1.5})
    scenario("model-alone", {1: 100, 4: 120}, 9.0, {"model": 12.0})
    scenario("model-alone-batching", {1: 95, 4: 150}, 10.5, {"model": 9.0})
    out = tmp_path / "performance.md"
    assert report.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    ladder = text.split("## Side by side")[1].split("##")[0]
    chain_row = next(line for line in ladder.splitlines() if line.startswith("| chain, compose"))
    # 70 / 170, 70 / 130, p50 24 vs 11, CPU 28.7 ms per request summed over the processes
    assert [cell.strip() for cell in chain_row.strip("|").split("|")][1:] == [
        "70.0 (c=4)", "0.41×", "0.54×", "24.0", "+13.0", "28.7",
    ]  # fmt: skip
    assert "| our pipeline in process (the chain's twin: same code, no HTTP) | 130.0 (c=4) | 0.76× | 1.00× |" in ladder
    # the floor of any three-process chain, between the twin and the chain: 102 / 170, p50 13.5 vs 11
    bare = (
        "| bare chain (the yardstick's work in 3 bare uvicorn + httpx processes, no telemetry) | 102.0 (c=4) | 0.60× |"
    )
    assert f"{bare} 0.78× | 13.5 | +2.5 | 16.5 |" in ladder
    assert ladder.index("| our pipeline in process") < ladder.index("| bare chain") < ladder.index("| chain, compose")
    cpu = text.split("## Where the CPU goes")[1].split("\n## ")[0]
    assert (
        "| scenario | c | workers | pipeline (bench process) | postprocess | preprocess | model | otel-collector | jaeger | total |"
        in cpu
    )
    assert "| chain-http | 1 |  |  | 3.90 | 8.20 | 15.70 | 0.50 | 0.40 | 28.70 |" in cpu
    assert "| inprocess | 1 |  | 12.00 |  |  |  |  |  | 12.00 |" in cpu
    assert "| bare-chain | 1 |  |  | 1.50 | 4.50 | 10.50 |  |  | 16.50 |" in cpu
    targets = text.split("## Targets")[1].split("\n## ")[0]
    assert "| chain × bare chain on the same stack | ≥ 0.90× | 0.69× (70.0 vs 102.0 req/s) | **missed** |" in targets
    assert "| chain as shipped (through the edge, telemetry on) × straightforward | ≥ 0.70× | not run | — |" in targets
    assert (
        "dynamic batching, model alone: throughput at c ≥ 4; p50 at c = 1 | higher at every c ≥ 4; ≤ +1 ms | c=4 1.25×; c=1 +1.5 ms | **missed**"
        in targets
    )
    assert (
        "dynamic batching, chain: throughput at c ≥ 4; p50 at c = 1 | higher at every c ≥ 4; ≤ +1 ms | not run | — |"
        in targets
    )
