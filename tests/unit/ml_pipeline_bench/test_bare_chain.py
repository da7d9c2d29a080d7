"""The bare chain: the lean three-process chain the study compares ours with — it must do the
yardstick's work (the same answer, over three real HTTP processes), meter each process and leave
nothing running, or its ratio means nothing."""

import os

import httpx
import numpy as np
import pytest

from ml_pipeline_bench.bare_chain import ROLES, BareChain, multipart_file
from ml_pipeline_bench.load import multipart_body
from ml_pipeline_bench.server_cpu import Meters, ProcessCpuMeter
from ml_pipeline_bench.straightforward import image_tensor, top5
from support.data import COFFEE_JPG, ESPRESSO

pytestmark = pytest.mark.anyio


def _model_path():
    from ml_pipeline.settings import MonolithSettings, load_settings
    from model.convert import ensure_model

    return ensure_model(load_settings(MonolithSettings).model_path)


def test_the_upload_is_cut_out_of_the_multipart_body_byte_for_byte():
    body, content_type = multipart_body(COFFEE_JPG)
    assert multipart_file(body, content_type) == COFFEE_JPG.read_bytes()
    # the boundary is a parameter like any other: quoted, or followed by another one
    boundary = content_type.partition("boundary=")[2]
    assert multipart_file(body, f'multipart/form-data; boundary="{boundary}"; charset=utf-8') == COFFEE_JPG.read_bytes()


def test_the_yardsticks_pieces_make_a_top5_of_probabilities():
    x = image_tensor(COFFEE_JPG.read_bytes())
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0  # (x - 127) / 128
    logits = np.array([0.0, 3.0, 1.0, 2.0, -1.0, 0.5], np.float32)
    ranked = top5(logits)
    assert [c for c, _ in ranked] == [1, 3, 2, 5, 0]
    softmax = np.exp(logits) / np.exp(logits).sum()
    assert [p for _, p in ranked] == pytest.approx(softmax[[1, 3, 2, 5, 0]].tolist(), rel=1e-6)


async def test_several_meters_read_as_one_under_their_own_names():
    meters = Meters(ProcessCpuMeter("a", lambda: [os.getpid()]), ProcessCpuMeter("b", list))
    assert meters.names == ["a", "b"]
    reading = await meters.read()
    assert set(reading) == {"a", "b"} and reading["a"] > 0 and reading["b"] == 0


@pytest.mark.slow
def test_the_bare_chain_answers_as_the_yardstick_does_through_three_processes_and_stops_them():
    from ml_pipeline_bench import straightforward

    model_path = _model_path()
    chain = BareChain(model_path)
    url = chain.start()
    try:
        pids = {chain._processes[role].pid for role in ROLES}
        assert len(pids) == 3 and os.getpid() not in pids
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
        body, content_type = multipart_body(COFFEE_JPG)
        answer = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)
        assert answer.status_code == 200
        ranked = [tuple(pair) for pair in answer.json()["top5"]]
    finally:
        chain.close()
    assert all(process.poll() is not None for process in chain._processes.values())

    straightforward._load(str(model_path))  # the yardstick's own session, here in this process
    expected = straightforward.classify(COFFEE_JPG.read_bytes())
    assert [c for c, _ in ranked] == [c for c, _ in expected] and ranked[0][0] == ESPRESSO
    assert [p for _, p in ranked] == pytest.approx([p for _, p in expected], abs=1e-4)


@pytest.mark.slow
def test_a_bare_chain_that_cannot_start_says_so_and_leaves_nothing_running(tmp_path):
    chain = BareChain(tmp_path / "missing.onnx")
    with pytest.raises(RuntimeError, match="model did not start"):
        chain.start(timeout_s=60)
    assert chain._processes and all(process.poll() is not None for process in chain._processes.values())


@pytest.mark.slow
async def test_a_bare_chain_run_meters_each_of_its_processes():
    from ml_pipeline_bench.load import run_bare_chain

    results = await run_bare_chain(COFFEE_JPG, [2], requests=40, duration_s=None, warmup=2, progress=False)
    (summary,) = (r.summary() for r in results)
    assert (summary["target"], summary["requests"], summary["errors"]) == ("bare-chain", 40, 0)
    cpu = summary["server_cpu_ms_per_request"]
    assert set(cpu) == set(ROLES)
    assert cpu["model"] > cpu["postprocess"] > 0  # the inference is where it should be; every process counted
