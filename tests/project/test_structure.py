"""The layers stay apart: the pipeline core imports no web framework, telemetry or settings package;
the data planes (what the routes call, and the monolith and the benchmark reuse) import no web
framework; and no service reaches into another service's web module."""

import ast
import json
import subprocess
import sys
import tomllib

import pytest

from support.data import ROOT

PACKAGE = ROOT / "services" / "ml_pipeline"
# The core: what turns bytes into tensors into scores, with numpy, Pillow and onnxruntime only —
# the shared package's ml_pipeline.core (every module in it), and each service's own.
SHARED_CORE = sorted(f"ml_pipeline.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__")
CORE = [
    *SHARED_CORE,
    "ml_pipeline.client.balancer",
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
    assert {"fastapi", "starlette", "opentelemetry"} <= loaded_by("ml_pipeline.web.envelope")


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


# The shared package's layers, bottom up: each may import the ones before it (and settings, which
# imports none of them), never one after it.
LAYERS = ["core", "observability", "client", "web"]


def test_the_core_is_every_module_of_ml_pipeline_core_and_mypy_holds_it_strict():
    assert {"ml_pipeline.core.codec", "ml_pipeline.core.errors", "ml_pipeline.core.open_inference_grpc"} <= set(
        SHARED_CORE
    )
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    (strict,) = [o["module"] for o in overrides if o.get("disallow_untyped_defs")]
    assert "ml_pipeline.core.*" in strict
    assert {m for m in CORE if not m.startswith("ml_pipeline.core.")} <= set(strict)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_of_the_shared_package_imports_only_those_below_it(layer):
    above = {f"ml_pipeline.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :]} | {"ml_pipeline.cli"}
    if layer == "core":
        above |= {"ml_pipeline.settings"}  # the core takes plain arguments, not settings
    for path in sorted((PACKAGE / layer).glob("*.py")):
        reached = {m for m in imported_modules(path) if any(m == a or m.startswith(a + ".") for a in above)}
        assert reached == set(), f"{path.relative_to(ROOT)} imports {sorted(reached)}"
    settings = imported_modules(PACKAGE / "settings.py")
    assert not {m for m in settings if m.startswith("ml_pipeline.")}, "settings imports the package it configures"


def test_the_layer_check_can_fail(tmp_path):
    """The AST reader sees an upward import (the check above is not vacuous)."""
    module = tmp_path / "m.py"
    module.write_text("from ml_pipeline.web.envelope import error_response\n")
    assert "ml_pipeline.web.envelope" in imported_modules(module)
