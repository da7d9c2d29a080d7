"""Traces in the deployed Jaeger: one complete trace per request, across real containers."""

import os

import httpx
import pytest

from support.data import COFFEE_JPG
from support.jaeger import fetch_trace, tags

pytestmark = pytest.mark.integration

# The model's server span: /predict, or the Open Inference Protocol's infer (MODEL_PROTOCOL).
MODEL_ROUTES = {
    "npy": "POST /predict",
    "v2-http": "POST /v2/models/{name}/infer",
    "v2-grpc": "/inference.GRPCInferenceService/ModelInfer",
}
PROTOCOL = os.environ.get("STACK_MODEL_PROTOCOL", "npy")
SERVER_ROUTES = {"postprocess": "POST /finalize", "preprocess": "POST /process", "model": MODEL_ROUTES[PROTOCOL]}


def test_each_request_is_one_complete_trace_in_jaeger(client, stack, jaeger):
    photo = COFFEE_JPG.read_bytes()
    # One keep-alive connection, large bodies on every hop: each request must still be its own trace.
    answers = [client.post("/finalize", files={"file": ("t.jpg", photo, "image/jpeg")}).json() for _ in range(4)]
    trace_ids = [a["trace_id"] for a in answers]
    assert len(set(trace_ids)) == 4
    for trace_id, model_instance in zip(trace_ids, (a["model_instance"] for a in answers), strict=True):
        trace = fetch_trace(jaeger, trace_id)
        spans = {s["spanID"]: s for s in trace["spans"]}
        service = {sid: trace["processes"][s["processID"]]["serviceName"] for sid, s in spans.items()}

        def parent(span):
            refs = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
            return spans.get(refs[0]["spanID"]) if refs else None

        servers = {}
        for sid, span in spans.items():
            if tags(span).get("span.kind") == "server":
                assert service[sid] not in servers, f"{service[sid]} has two server spans in {trace_id}"
                servers[service[sid]] = span
        assert {svc: s["operationName"] for svc, s in servers.items()} == SERVER_ROUTES
        assert parent(servers["postprocess"]) is None
        for downstream, upstream in (("preprocess", "postprocess"), ("model", "preprocess")):
            client_span = parent(servers[downstream])
            assert tags(client_span)["span.kind"] == "client"
            assert service[client_span["spanID"]] == upstream
        assert parent(parent(servers["model"]))["operationName"] == "handoff"
        names = {s["operationName"] for s in spans.values()}
        assert {
            "forward",
            "decode",
            "resize",
            "normalize",
            "handoff",
            "tensor_decode",
            "inference",
            "postprocess",
        } <= names
        model_process = trace["processes"][servers["model"]["processID"]]
        assert tags(model_process)["service.instance.id"] == model_instance  # the replica that served it
        preprocess_stage = parent(parent(servers["model"]))
        endpoint = tags(preprocess_stage).get("ml_pipeline.downstream.endpoint", "")
        if PROTOCOL == "v2-grpc":
            assert tags(servers["model"]).get("rpc.system") == "grpc"  # gRPC balances itself: no endpoint chosen by us
        else:
            assert endpoint.endswith(":5000"), endpoint  # its address, chosen per request


def test_the_public_edge_starts_its_own_trace_and_links_the_callers(client, jaeger):
    """A client's traceparent (even with sampling off) neither sets the trace id nor drops the trace."""
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    r = client.post(
        "/finalize",
        files={"file": ("t.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")},
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-00"},
    )
    assert r.status_code == 200
    trace_id = r.json()["trace_id"]
    assert trace_id != caller_trace
    trace = fetch_trace(jaeger, trace_id)  # complete: sampled despite the caller's flags
    edge = next(s for s in trace["spans"] if s["operationName"] == "POST /finalize")
    links = [(ref["traceID"], ref["spanID"]) for ref in edge["references"] if ref["refType"] == "FOLLOWS_FROM"]
    assert links == [(caller_trace, caller_span)]
    assert httpx.get(f"{jaeger}/api/traces/{caller_trace}", timeout=5).status_code == 404
