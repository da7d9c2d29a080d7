"""The layers stay apart: the pipeline core imports no web framework, telemetry or settings package,
and the service images' code holds none of the study's tooling."""

import json
import subprocess
import sys

import pytest

# The core: what turns bytes into tensors into scores, with numpy, Pillow and onnxruntime only.
CORE = ["ml_pipeline.errors", "ml_pipeline.codec", "ml_pipeline.handoff", "ml_pipeline.deadline", "model.backends",
        "ml_pipeline.cache", "ml_pipeline.balancer", "preprocess.imaging", "model.convert", "postprocess.scoring"]
WEB_AND_TELEMETRY = {"fastapi", "starlette", "uvicorn", "httpx", "httpcore", "anyio", "pydantic", "pydantic_settings",
                     "opentelemetry", "prometheus_client", "multipart", "python_multipart"}


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_web_or_telemetry_package(module):
    probe = (f"import json, sys, {module}; "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                           check=True, timeout=60).stdout))
    assert loaded & WEB_AND_TELEMETRY == set(), f"{module} pulls in {sorted(loaded & WEB_AND_TELEMETRY)}"


def test_the_probe_sees_a_web_import():
    """The check above can fail: the web layer's error mapping does import the framework."""
    probe = "import json, sys, ml_pipeline.http_errors; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                           check=True, timeout=60).stdout))
    assert {"fastapi", "opentelemetry"} <= loaded
