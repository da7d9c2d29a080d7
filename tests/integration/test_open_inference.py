"""The running model speaks the Open Inference Protocol (KServe v2) to Triton's own clients:
health, metadata, configuration, inference with binary data on and off and several outputs, and
every bad request answered with the protocol's error — never a 5xx; the logits equal /predict's."""

from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
from tritonclient.utils import InferenceServerException

from ml_pipeline.core import codec, wire
from preprocess import imaging
from support.data import CHELSEA_JPG, COFFEE_JPG, ESPRESSO
from support.triton import grpc_input

pytestmark = pytest.mark.integration
MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def triton(stack):
    client = tritonhttp.InferenceServerClient(url=urlsplit(stack["model"]).netloc, network_timeout=30)
    yield client
    client.close()


def photo_tensor(path) -> np.ndarray:
    return imaging.normalize(imaging.resize_crop(imaging.decode(path.read_bytes(), 40_000_000, 16_000_000)))


def infer(triton, x: np.ndarray, *, binary_in=True, outputs=(("logits", True),)):
    inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    wanted = [tritonhttp.InferRequestedOutput(name, binary_data=binary) for name, binary in outputs]
    return triton.infer(MODEL, [inp], outputs=wanted)


def test_health_and_metadata_read_by_the_triton_client(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, model_version="1")
    server = triton.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"logits": [-1, 1000], "probabilities": [-1, 1000]}
    config = triton.get_model_config(MODEL)
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [3, 224, 224]
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["output"][0]["dims"] == [1000]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_inference_with_binary_data_on_and_off_equals_predict(triton, stack, binary):
    x = np.concatenate([photo_tensor(COFFEE_JPG), photo_tensor(CHELSEA_JPG)])
    result = infer(triton, x, binary_in=binary, outputs=(("logits", binary), ("probabilities", not binary)))
    logits, probabilities = result.as_numpy("logits"), result.as_numpy("probabilities")
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert int(np.argmax(logits[0])) == ESPRESSO and 281 <= int(np.argmax(logits[1])) <= 285
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert probabilities[0, ESPRESSO] == pytest.approx(0.96, abs=0.03)
    predicted = httpx.post(
        f"{stack['model']}/predict", content=codec.encode(x), headers={"Content-Type": wire.NPY_MEDIA_TYPE}, timeout=30
    )
    # The same model and tensor: the same logits, bit for bit where both are binary (JSON: float text).
    np.testing.assert_allclose(logits, codec.decode(predicted.content), rtol=0, atol=0 if binary else 1e-6)


def test_outputs_default_to_all_and_can_be_asked_for_by_name(triton):
    x = photo_tensor(COFFEE_JPG)
    inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    everything = triton.infer(MODEL, [inp])
    assert everything.as_numpy("logits").shape == everything.as_numpy("probabilities").shape == (1, 1000)
    only = infer(triton, x, outputs=(("probabilities", True),))
    assert only.as_numpy("logits") is None and only.as_numpy("probabilities").shape == (1, 1000)


def refused(call) -> str:
    with pytest.raises(InferenceServerException) as error:
        call()
    return str(error.value)


def test_bad_requests_get_the_protocols_error_from_the_client(triton):
    x = photo_tensor(COFFEE_JPG)
    wrong_type = tritonhttp.InferInput("input", list(x.shape), "FP64")
    wrong_type.set_data_from_numpy(x.astype(np.float64))
    assert "must be FP32, not FP64" in refused(lambda: triton.infer(MODEL, [wrong_type]))
    wrong_shape = tritonhttp.InferInput("input", [1, 3, 224, 225], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 224, 225), np.float32))
    assert "is not [N,3,224,224]" in refused(lambda: triton.infer(MODEL, [wrong_shape]))
    wrong_name = tritonhttp.InferInput("pixels", list(x.shape), "FP32")
    wrong_name.set_data_from_numpy(x)
    assert "takes one input, 'input'" in refused(lambda: triton.infer(MODEL, [wrong_name]))
    assert "no output 'scores'" in refused(lambda: infer(triton, x, outputs=(("scores", True),)))
    assert "unknown model 'resnet50'" in refused(lambda: triton.get_model_metadata("resnet50"))
    assert "has no version '2'" in refused(lambda: triton.get_model_metadata(MODEL, model_version="2"))


def binary_request(size_claimed: int, payload: bytes) -> tuple[bytes, str]:
    header = (
        '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3,224,224],'
        f'"parameters":{{"binary_data_size":{size_claimed}}}}}]}}'
    ).encode()
    return header + payload, str(len(header))


@pytest.mark.parametrize(
    "case, words",
    [
        ("truncated binary section", "run past the end"),
        ("header length past the body", "past the end of the"),
        ("header length not a number", "byte count"),
        ("not JSON", "not valid JSON"),
        ("unknown model", "unknown model"),
    ],
)
def test_malformed_bodies_are_4xx_with_the_protocols_error(stack, case, words):
    tensor = np.zeros((1, 3, 224, 224), np.float32).tobytes()
    body, length = binary_request(len(tensor), tensor)
    url_model = MODEL
    if case == "truncated binary section":
        body = body[: len(body) - 1000]
    elif case == "header length past the body":
        length = str(len(body) + 1)
    elif case == "header length not a number":
        length = "lots"
    elif case == "not JSON":
        body, length = b"{inputs: nope}", None
    else:
        url_model = "no-such-model"
    headers = {"Content-Type": "application/octet-stream"}
    if length is not None:
        headers[wire.INFERENCE_HEADER_LENGTH_HEADER] = length
    r = httpx.post(f"{stack['model']}/v2/models/{url_model}/infer", content=body, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.text
    assert r.headers.get("x-trace-id")


# --------------------------------------------------------------------------- gRPC


@pytest.fixture(scope="module")
def triton_grpc(model_grpc):
    client = tritongrpc.InferenceServerClient(url=model_grpc)
    yield client
    client.close()


def test_the_grpc_service_answers_tritons_grpc_client_like_predict(triton_grpc, stack):
    assert triton_grpc.is_server_live() and triton_grpc.is_server_ready() and triton_grpc.is_model_ready(MODEL)
    meta = triton_grpc.get_model_metadata(MODEL)
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [("logits", [-1, 1000]), ("probabilities", [-1, 1000])]
    x = np.concatenate([photo_tensor(COFFEE_JPG), photo_tensor(CHELSEA_JPG)])
    outputs = [tritongrpc.InferRequestedOutput("logits"), tritongrpc.InferRequestedOutput("probabilities")]
    result = triton_grpc.infer(MODEL, [grpc_input(x)], outputs=outputs, request_id="r-1")
    logits = result.as_numpy("logits")
    assert result.get_response().id == "r-1" and int(np.argmax(logits[0])) == ESPRESSO
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1, rtol=1e-5)
    predicted = httpx.post(
        f"{stack['model']}/predict", content=codec.encode(x), headers={"Content-Type": wire.NPY_MEDIA_TYPE}, timeout=30
    )
    np.testing.assert_array_equal(logits, codec.decode(predicted.content))


def test_bad_grpc_calls_get_the_protocols_status(triton_grpc):
    x = photo_tensor(COFFEE_JPG)

    def status(call) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as error:
            call()
        return error.value.status(), error.value.message()

    code, message = status(lambda: triton_grpc.infer(MODEL, [grpc_input(x.astype(np.float64), datatype="FP64")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "must be FP32" in message
    code, message = status(lambda: triton_grpc.infer(MODEL, [grpc_input(x[:, :, :100])]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "is not [N,3,224,224]" in message
    code, message = status(lambda: triton_grpc.infer("resnet50", [grpc_input(x)]))
    assert code == "StatusCode.NOT_FOUND" and "unknown model" in message
    # Of Triton's own extra methods, ModelConfig and ModelStatistics are served (as perf_analyzer uses
    # them); the rest, shared memory among them, are not.
    assert triton_grpc.get_model_config(MODEL).config.name == MODEL
    assert status(lambda: triton_grpc.get_system_shared_memory_status())[0] == "StatusCode.UNIMPLEMENTED"
