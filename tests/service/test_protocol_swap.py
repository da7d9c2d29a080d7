"""preprocess needs nothing but the Open Inference Protocol: against our model in protocol-only mode
(no /predict, none of the pipeline's own headers — what a Triton or KServe server looks like),
the chain classifies over v2-http and v2-grpc alike."""

import httpx
import pytest

from support.apps import free_port, make_settings, running_chain
from support.data import COFFEE_JPG

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("protocol", ["v2-http", "v2-grpc"])
async def test_the_chain_works_against_a_protocol_only_model(protocol, exporter):
    port = free_port()
    settings = make_settings(
        open_inference_only=True, model_protocol=protocol, grpc_port=port, model_grpc_target=f"127.0.0.1:{port}"
    )
    async with running_chain(settings, exporter) as client:
        answer = await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        model = client.apps["model"]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=model), base_url="http://model.test") as direct:
            predict = await direct.post("/predict", content=b"x", headers={"Content-Type": "application/x-npy"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["transport"] == protocol and body["model"] == "random-1000"  # named by the protocol's answer
    assert body["backend"] == "unknown" and body["model_instance"] is None  # no pipeline headers came
    assert predict.status_code == 404
