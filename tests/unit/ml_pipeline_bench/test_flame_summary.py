"""bench/flame_summary.py on a small flame graph in py-spy's SVG shape: the frame tree from the
rectangles, standard-library frames counted for their caller, and the shares scaled to ms."""

import importlib.util
import sys

from support.data import ROOT

spec = importlib.util.spec_from_file_location("flame_summary", ROOT / "bench" / "flame_summary.py")
assert spec and spec.loader
flame_summary = importlib.util.module_from_spec(spec)
sys.modules["flame_summary"] = flame_summary  # its dataclass looks itself up there
spec.loader.exec_module(flame_summary)

SITE = "/opt/venv/lib/python3.12/site-packages"
STDLIB = "/usr/lib/python3.12"


def frame(name: str, file: str, x: int, w: int, depth: int) -> str:
    """One py-spy (inferno) frame: ``fg:x``/``fg:w`` in samples, deeper frames lower down."""
    return (
        f'<g><title>{name} ({file}) ({w} samples, {w}%)</title><rect x="{x}%" y="{52 + 16 * depth}" '
        f'width="{w}%" height="15" fill="rgb(0,0,0)" fg:x="{x}" fg:w="{w}"/></g>'
    )


# 100 samples: 60 in the handler (of which 30 in json under logging, 20 in asyncio's socket write
# under httpcore), 40 in ONNX Runtime.
SVG = "".join(
    [
        frame("all", "", 0, 100, 0),
        frame("main", f"{SITE}/ml_pipeline/cli.py", 0, 100, 1),
        frame("handle", f"{SITE}/ml_pipeline/telemetry.py", 0, 60, 2),
        frame("emit", f"{STDLIB}/logging/__init__.py", 0, 30, 3),
        frame("dumps", f"{STDLIB}/json/__init__.py", 0, 30, 4),
        frame("send", f"{SITE}/httpcore/_async/http11.py", 30, 20, 3),
        frame("write", f"{STDLIB}/asyncio/selector_events.py", 30, 20, 4),
        frame("run", f"{SITE}/onnxruntime/capi/onnxruntime_inference_collection.py", 60, 40, 2),
    ]
)


def test_self_time_goes_to_the_innermost_frame_outside_the_standard_library_and_scales_to_ms():
    frames = flame_summary.parse(SVG)
    by_name = {f.name: f for f in frames}
    assert by_name["write"].parent is by_name["send"] and by_name["dumps"].parent is by_name["emit"]
    assert by_name["handle"].self_samples == 10
    text = flame_summary.summary(frames, cpu_ms=2.0)  # the process's counter: 2 ms per request
    layers = text.split("self time by layer:")[1].split("top 25")[0]
    assert "40.0 %   0.800 ms  the work" in layers
    assert "30.0 %   0.600 ms  logging + json" in layers  # json under logging is the log line's
    assert "20.0 %   0.400 ms  httpx + httpcore" in layers  # the socket write is the client's
    assert "10.0 %   0.200 ms  ml_pipeline" in layers
    assert "2.00 ms of CPU per request" in text
    assert "60.0 %   1.200 ms  handle (ml_pipeline/telemetry.py)" in text.split("inclusive time")[1]


def test_the_aiohttp_transport_counts_for_the_downstream_client_not_our_package():
    site = "/usr/local/lib/python3.11/site-packages"
    for file in (f"{site}/aiohttp/http_writer.py", f"{site}/yarl/_url.py", f"{site}/httpx/_client.py"):
        assert flame_summary.layer(file) == flame_summary.CLIENT, file
    assert flame_summary.layer("/app/ml_pipeline/client/aiohttp_transport.py") == flame_summary.CLIENT
    assert flame_summary.layer("/app/ml_pipeline/client/downstream.py").startswith("ml_pipeline")
