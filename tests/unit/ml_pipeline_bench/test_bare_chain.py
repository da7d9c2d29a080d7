"""The bare chain: the floor the study compares the chain with — it must do the chain's work (the
right class, over three real HTTP processes) and meter each process, or its ratio means nothing."""

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


def test_the_upload_is_cut_out_of_the_multipart_body_byte_for_byte():
    body, content_type = multipart_body(COFFEE_JPG)
    assert multipart_file(body, content_type) == COFFEE_JPG.read_bytes()


def test_the_yardsticks_pieces_make_a_top5_of_probabilities():
    x = image_tensor(COFFEE_JPG.read_bytes())
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0  # (x - 127) / 128
    ranked = top5(np.array([0.0, 3.0, 1.0, 2.0, -1.0, 0.5], np.float32))
    assert [c for c, _ in ranked] == [1, 3, 2, 5, 0]
    assert ranked[0][1] > ranked[1][1] > 0


async def test_several_meters_read_as_one_under_their_own_names():
    meters = Meters(ProcessCpuMeter("a", lambda: [os.getpid()]), ProcessCpuMeter("b", list))
    assert meters.names == ["a", "b"]
    reading = await meters.read()
    assert set(reading) == {"a", "b"} and reading["a"] > 0 and reading["b"] == 0


@pytest.mark.slow
def test_the_bare_chain_classifies_through_three_processes_and_stops_them():
    from ml_pipeline.settings import MonolithSettings, load_settings
    from model.convert import ensure_model

    chain = BareChain(ensure_model(load_settings(MonolithSettings).model_path))
    url = chain.start()
    try:
        body, content_type = multipart_body(COFFEE_JPG)
        answer = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)
        assert answer.status_code == 200
        (best, probability), *_ = answer.json()["top5"]
        assert best == ESPRESSO and probability > 0.9
        assert len({chain.urls[role].split("/")[2] for role in ROLES}) == 3  # three servers, three ports
    finally:
        chain.close()
    assert all(process.poll() is not None for process in chain._processes.values())


@pytest.mark.slow
async def test_a_bare_chain_run_meters_each_of_its_processes():
    from ml_pipeline_bench.load import run_bare_chain

    results = await run_bare_chain(COFFEE_JPG, [1, 2], requests=6, duration_s=None, warmup=1, progress=False)
    for summary in (r.summary() for r in results):
        assert (summary["target"], summary["requests"], summary["errors"]) == ("bare-chain", 6, 0)
        cpu = summary["server_cpu_ms_per_request"]
        assert set(cpu) == set(ROLES) and all(ms > 0 for ms in cpu.values())
        assert cpu["model"] > cpu["postprocess"]  # the inference is where it should be
