"""The tensor hand-off: encodings, the shared-volume file rules, and all three modes through the
in-process chain (identical answers, nothing left behind)."""

import os
import time

import httpx
import numpy as np
import pytest

from conftest import CHELSEA_JPG, COFFEE_JPG, NetworkASGITransport, make_settings, running_chain
from ml_pipeline import codec, handoff
from ml_pipeline.errors import BadRequest

LIMIT = 700_000


def tensor(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)


# --------------------------------------------------------------------------- encodings


def test_json_round_trip_is_exact():
    x = tensor()
    np.testing.assert_array_equal(handoff.decode_json(handoff.encode_json(x)), x)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"[1, 2]", "send {"),
        (b'{"shape": [2], "dtype": "float64", "data": [1, 2]}', "float64"),
        (b'{"shape": [3], "dtype": "float32", "data": [1, 2]}', "not the declared"),
        (b'{"shape": [2, 2], "dtype": "float32", "data": [[1, 2], [3]]}', "regular nested list"),
        (b'{"shape": [1], "dtype": "float32", "data": ["x"]}', "regular nested list"),
        (b"not json", "send {"),
    ],
)
def test_malformed_json_tensors_are_400(body, words):
    with pytest.raises(BadRequest, match=words):
        handoff.decode_json(body)


# --------------------------------------------------------------------------- volume files


def test_write_then_read_and_the_write_is_atomic(tmp_path):
    x = tensor()
    name, size = handoff.write_tensor(tmp_path, x)
    assert os.listdir(tmp_path) == [name] and size == len(codec.encode(x))  # no temporary left
    np.testing.assert_array_equal(handoff.read_tensor(tmp_path, name, LIMIT), x)
    other, _ = handoff.write_tensor(tmp_path, x)
    assert other != name  # a unique file per request
    handoff.remove(tmp_path, name)
    handoff.remove(tmp_path, name)  # idempotent
    assert os.listdir(tmp_path) == [other]


@pytest.mark.parametrize("reference", ["../secret.npy", "/etc/passwd", "a/b.npy", "..", "", "input.npy",
                                       "0" * 32 + ".npy/../x", "0" * 31 + ".npy", "0" * 32 + ".NPY"])
def test_references_that_are_not_handoff_names_are_refused(tmp_path, reference):
    with pytest.raises(BadRequest) as err:
        handoff.decode_reference(handoff.encode_reference(reference))
    assert err.value.code == "invalid_reference"
    with pytest.raises(BadRequest):
        handoff.read_tensor(tmp_path, reference, LIMIT)


def test_bad_reference_bodies_are_refused():
    for body in (b"nope", b'{"file": "x"}', b'{"name": 7}', b"[]"):
        with pytest.raises(BadRequest):
            handoff.decode_reference(body)


def test_files_that_are_not_safe_regular_handoff_files_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.npy"
    outside.write_bytes(codec.encode(tensor()))
    names = iter(f"{i:032x}.npy" for i in range(1, 100))

    link_out = next(names)
    (root / link_out).symlink_to(outside)
    inside_target, _ = handoff.write_tensor(root, tensor())
    link_in = next(names)
    (root / link_in).symlink_to(root / inside_target)
    fifo = next(names)
    os.mkfifo(root / fifo)
    directory = next(names)
    (root / directory).mkdir()
    big = next(names)
    (root / big).write_bytes(codec.encode(np.zeros((2, 3, 224, 224), np.float32)))
    float64 = next(names)
    (root / float64).write_bytes(codec.encode(tensor().astype(np.float64)))
    garbage = next(names)
    (root / garbage).write_bytes(b"\x93NUMPY garbage")
    missing = next(names)

    for name, words in [(link_out, "cannot be opened"), (link_in, "cannot be opened"), (fifo, "not a regular file"),
                        (directory, "not a regular file"), (big, "more than"), (garbage, "not a .npy"), (missing, "no hand-off file")]:
        with pytest.raises(BadRequest, match=words):
            handoff.read_tensor(root, name, LIMIT)
    assert handoff.read_tensor(root, float64, 2 * LIMIT).dtype == np.float64  # the model's validation refuses it (below)


def test_sweep_removes_only_old_handoff_files(tmp_path):
    fresh, _ = handoff.write_tensor(tmp_path, tensor())
    old, _ = handoff.write_tensor(tmp_path, tensor())
    stale_tmp = tmp_path / f".tmp-{'a' * 32}.npy"
    stale_tmp.write_bytes(b"half")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    link = tmp_path / f"{'b' * 32}.npy"
    link.symlink_to(unrelated)
    long_ago = time.time() - 3600
    for path in (tmp_path / old, stale_tmp, unrelated):
        os.utime(path, (long_ago, long_ago))
    os.utime(link, (long_ago, long_ago), follow_symlinks=False)
    assert handoff.sweep(tmp_path, ttl_s=60) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([fresh, "notes.txt", link.name])
    assert handoff.sweep(tmp_path / "absent", ttl_s=60) == 0


# --------------------------------------------------------------------------- through the chain



@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["random", "onnx"])
async def test_every_transport_gives_identical_answers_and_leaves_nothing(tmp_path, exporter, backend):
    settings = make_settings(model_backend=backend, shared_data_dir=tmp_path, allow_transport_override=True)
    answers = {}
    async with running_chain(settings, exporter) as client:
        pre = httpx.AsyncClient(transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test")
        for mode in handoff.TRANSPORTS:
            for photo in (COFFEE_JPG, CHELSEA_JPG):
                r = await pre.post("/process", params={"transport": mode}, files={"file": ("p.jpg", photo.read_bytes(), "image/jpeg")})
                assert r.status_code == 200 and r.headers["x-tensor-transport"] == mode, r.text
                answers[mode, photo.name] = codec.decode(r.content)
        await pre.aclose()
        final = (await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})).json()
    for photo in (COFFEE_JPG, CHELSEA_JPG):
        np.testing.assert_array_equal(answers["json", photo.name], answers["http", photo.name])
        np.testing.assert_array_equal(answers["volume", photo.name], answers["http", photo.name])
    assert final["transport"] == "http"  # the TRANSPORT default
    assert os.listdir(tmp_path) == []
    handoff_spans = {s.attributes["handoff.transport"]: s for s in exporter.get_finished_spans() if s.name == "handoff"}
    assert set(handoff_spans) == set(handoff.TRANSPORTS)
    assert handoff_spans["volume"].attributes["handoff.file.write_ms"] > 0
    assert handoff_spans["volume"].attributes["tensor.bytes"] == handoff_spans["http"].attributes["tensor.bytes"]
    assert handoff_spans["volume"].attributes["handoff.body.bytes"] < 100
    assert handoff_spans["json"].attributes["tensor.bytes"] > 2 * handoff_spans["http"].attributes["tensor.bytes"]
    reads = [s for s in exporter.get_finished_spans() if s.name == "tensor_decode" and s.attributes["handoff.transport"] == "volume"]
    assert reads and reads[0].attributes["handoff.file.read_ms"] >= 0


@pytest.mark.anyio
async def test_transport_setting_chooses_the_default_and_bad_values_are_422(tmp_path):
    async with running_chain(make_settings(transport="volume", shared_data_dir=tmp_path)) as client:
        answer = (await client.post("/finalize", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})).json()
        pre = httpx.AsyncClient(transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test")
        bad = await pre.post("/process", params={"transport": "carrier-pigeon"}, files={"file": ("c.jpg", b"x", "image/jpeg")})
        await pre.aclose()
    assert answer["transport"] == "volume" and answer["class_id"] >= 0
    assert bad.status_code == 422 and "transport" in bad.json()["error"]["message"]
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_choosing_the_transport_per_request_is_off_unless_allowed(tmp_path):
    async with running_chain(make_settings(shared_data_dir=tmp_path)) as client:
        pre = httpx.AsyncClient(transport=NetworkASGITransport(app=client.apps["preprocess"]), base_url="http://preprocess.test")
        refused = await pre.post("/process", params={"transport": "volume"}, files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        plain = await pre.post("/process", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
        await pre.aclose()
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "transport_override_disabled"
    assert plain.status_code == 200 and plain.headers["x-tensor-transport"] == "http"


@pytest.mark.anyio
async def test_a_model_that_dies_mid_request_leaves_no_file(tmp_path):
    """The model reads nothing and the connection breaks: preprocess (the writer) still deletes;
    and a file a crashed writer left behind goes with the sweep."""
    from preprocess.app import create_app

    def crash(request):
        assert len(os.listdir(tmp_path)) == 1  # the file was written before the model was called
        raise httpx.RemoteProtocolError("model died", request=request)

    settings = make_settings(transport="volume", shared_data_dir=tmp_path, model_max_attempts=2)
    app = create_app(settings, model_transport=httpx.MockTransport(crash))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p.test") as c:
        r = await c.post("/process", files={"file": ("c.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})
    assert r.status_code == 503 and r.json()["error"]["code"] == "downstream_unavailable"
    assert os.listdir(tmp_path) == []

    orphan, _ = handoff.write_tensor(tmp_path, tensor())  # as if preprocess itself had crashed
    long_ago = time.time() - 3600
    os.utime(tmp_path / orphan, (long_ago, long_ago))
    assert handoff.sweep(tmp_path, settings.handoff_file_ttl_s) == 1 and os.listdir(tmp_path) == []


def test_model_refuses_bad_references_with_400(tmp_path):
    from fastapi.testclient import TestClient

    from model.app import create_app

    (tmp_path / f"{'c' * 32}.npy").write_bytes(codec.encode(tensor().astype(np.float64)))
    with TestClient(create_app(make_settings(shared_data_dir=tmp_path))) as client:
        for body, code in [(handoff.encode_reference("../etc/passwd"), "invalid_reference"),
                           (handoff.encode_reference(f"{'d' * 32}.npy"), "invalid_reference"),
                           (handoff.encode_reference(f"{'c' * 32}.npy"), "invalid_tensor")]:
            r = client.post("/predict", content=body, headers={"Content-Type": handoff.REFERENCE_MEDIA_TYPE})
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
