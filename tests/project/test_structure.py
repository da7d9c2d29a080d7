"""The layers stay apart: the pipeline core imports no web framework, telemetry or settings package;
the data planes (what the routes call, and the monolith and the benchmark reuse) import no web
framework; and no service reaches into another service's web module."""

import ast
import json
import subprocess
import sys

import pytest

from support.data import ROOT

# The core: what turns bytes into tensors into scores, with numpy, Pillow and onnxruntime only.
CORE = [
    "ml_pipeline.errors",
    "ml_pipeline.codec",
    "ml_pipeline.handoff",
    "ml_pipeline.deadline",
    "ml_pipeline.wire",
    "ml_pipeline.cache",
    "ml_pipeline.balancer",
    "preprocess.imaging",
    "model.backends",
    "model.convert",
    "model.statistics",
    "postprocess.scoring",
]
WEB_AND_TELEMETRY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "httpcore",
    "anyio",
    "pydantic",
    "pydantic_settings",
    "opentelemetry",
    "prometheus_client",
    "multipart",
    "python_multipart",
}
# The data planes: the services' work behind thin routes; telemetry and HTTP clients, no web server.
DATA_PLANES = ["preprocess.dataplane", "model.dataplane", "postprocess.dataplane", "monolith.pipeline"]
WEB_FRAMEWORK = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart"}
SERVICES = ["preprocess", "model", "postprocess", "monolith"]


def loaded_by(module: str) -> set[str]:
    """Top-level packages importing ``module`` loads, in a fresh interpreter."""
    probe = f"import json, sys, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_web_or_telemetry_package(module):
    loaded = loaded_by(module)
    assert loaded & WEB_AND_TELEMETRY == set(), f"{module} pulls in {sorted(loaded & WEB_AND_TELEMETRY)}"


@pytest.mark.parametrize("module", DATA_PLANES)
def test_the_data_planes_import_no_web_framework(module):
    loaded = loaded_by(module)
    assert loaded & WEB_FRAMEWORK == set(), f"{module} pulls in {sorted(loaded & WEB_FRAMEWORK)}"


def test_the_probe_sees_a_web_import():
    """The checks above can fail: the web layer's error mapping does import the framework."""
    assert {"fastapi", "starlette", "opentelemetry"} <= loaded_by("ml_pipeline.http_errors")


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another_services_web_module(service):
    foreign_apps = {f"{other}.app" for other in SERVICES if other != service}
    for path in sorted((ROOT / "services" / service).glob("*.py")):
        assert imported_modules(path) & foreign_apps == set(), (
            f"{path.relative_to(ROOT)} imports {imported_modules(path) & foreign_apps}"
        )
    bench = ROOT / "bench" / "ml_pipeline_bench"
    for path in sorted(bench.glob("*.py")):
        assert not {f"{s}.app" for s in SERVICES} & imported_modules(path), (
            f"{path.relative_to(ROOT)} imports a web module"
        )
