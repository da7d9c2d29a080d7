"""Schemathesis against each service's own OpenAPI schema, the apps in this process (random backend).

For every operation of every service (model, preprocess, postprocess — postprocess and preprocess
with their downstream apps wired in-process as in ``support.apps.running_chain``), Schemathesis generates
``FUZZ_EXAMPLES`` requests (default 50) from the schema, positive (schema-valid) and negative
(schema-violating), seeded with ``FUZZ_SEED`` (default 1) so a failure reproduces, and checks:

* ``not_a_server_error``: no 5xx, whatever the request;
* ``content_type_conformance``, ``response_schema_conformance``, ``response_headers_conformance``:
  where the schema declares a response, the response matches it.

Not checked: ``status_code_conformance`` (the schemas do not list their 4xx answers: 400, 413, 415)
and ``positive_data_acceptance`` (a ``format: binary`` file can be schema-valid and still not an
image). ``FUZZ_STRICT=1`` adds both, to see what they would report.

In positive mode the upload and the ``/predict`` body are bytes from the fuzz seed corpora (valid
images and ``.npy`` tensors, plus test.jpg and its real tensor), mutated copies of them, or random
bytes, instead of random text: so requests get past the first byte check, and some succeed (their
200 answers are checked against the schema too).

``/predict`` also accepts JSON tensors and volume references that its schema does not declare:
``test_predict_undeclared_media_types`` sends those with Hypothesis directly.

Schemathesis' own pytest integration (``schema.parametrize()``, ``from_fixture``) fails on pytest 9
(it sets ``Function._nodeid``), so each operation runs as a plain Hypothesis test here.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from pathlib import Path

import anyio.from_thread
import httpx
import numpy as np
import pytest
import schemathesis
from fuzz_targets import SEEDS, Choices, json_from_choices, npy_from_choices
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks
from schemathesis.python import asgi as schemathesis_asgi

from support.apps import NetworkASGITransport, make_settings
from support.data import COFFEE_JPG

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))
STRICT = os.environ.get("FUZZ_STRICT") == "1"
# Shrinking several distinct failures to minimal examples takes minutes; off unless asked for.
PHASES = [Phase.explicit, Phase.generate] + ([Phase.shrink] if os.environ.get("FUZZ_SHRINK") == "1" else [])
SERVICES = ["model", "preprocess", "postprocess"]
NPY, JSON, REF = "application/x-npy", "application/json", "application/vnd.ml-pipeline.tensor-ref+json"


# --------------------------------------------------------------------------- inputs


def _seed_files(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((SEEDS / kind).iterdir()) if not p.name.startswith("gen-")]


def _mutate(args: tuple[bytes, list[tuple[int, int]], int]) -> bytes:
    data, edits, cut = args
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out[:cut]) if cut < len(out) else bytes(out)


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed as is, a seed with a few bytes changed and/or cut short, or random bytes."""
    edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8)
    changed = st.tuples(st.sampled_from(seeds), edits, st.integers(0, 8192)).map(_mutate)
    return st.one_of(st.sampled_from(seeds), changed, st.binary(max_size=512))


schemathesis.serializer.alias(NPY, "application/octet-stream")


def use_fuzz_bodies(schema) -> None:
    """Uploads and ``/predict`` bodies from the seed corpora (and test.jpg's real tensor), as is,
    mutated, or random, instead of the random strings Schemathesis would make of them."""
    uploads = mutated([*_seed_files("image"), COFFEE_JPG.read_bytes()])
    tensors = mutated([*_seed_files("npy"), _real_tensor()])

    @schema.hook
    def flatmap_body(ctx, body):
        if ctx.operation.path == "/predict":
            return tensors
        if isinstance(body, dict) and "file" in body:
            return uploads.map(lambda data: {**body, "file": data})
        return st.just(body)


# --------------------------------------------------------------------------- apps


class WithDownstreams:
    """``app``, whose ASGI lifespan also runs the lifespans of the in-process apps it calls."""

    def __init__(self, app, *downstreams):
        self.app = app
        self.downstreams = downstreams

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        async with contextlib.AsyncExitStack() as stack:
            for app in self.downstreams:
                await stack.enter_async_context(app.router.lifespan_context(app))
            await self.app(scope, receive, send)


def service_app(service: str, shared_dir: Path):
    from model.app import create_app as create_model
    from postprocess.app import create_app as create_postprocess
    from preprocess.app import create_app as create_preprocess

    settings = make_settings(shared_data_dir=shared_dir)
    model = create_model(settings)
    if service == "model":
        return model
    pre = create_preprocess(settings, model_transport=NetworkASGITransport(app=model))
    if service == "preprocess":
        return WithDownstreams(pre, model)
    post = create_postprocess(settings, preprocess_transport=NetworkASGITransport(app=pre))
    return WithDownstreams(post, model, pre)


# --------------------------------------------------------------------------- schemathesis


def _checks() -> list:
    load_all_checks()
    from schemathesis import checks

    found = [
        checks.not_a_server_error,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
    ]
    if STRICT:
        found += [checks.status_code_conformance, checks.positive_data_acceptance]
    return found


def _run_operation(operation, mode: GenerationMode, checks: list) -> None:
    @seed(SEED)
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck), phases=PHASES
    )
    @given(case=operation.as_strategy(mode))
    def run(case):
        case.call_and_validate(checks=checks)

    run()


def describe(exc: BaseException, indent: str = "") -> str:
    """Each distinct failure Hypothesis found (a group of them, possibly nested): what, and the
    request that caused it (Schemathesis' messages carry a curl command)."""
    if isinstance(exc, BaseExceptionGroup) and type(exc).__name__ != "FailureGroup":
        return "\n".join(describe(sub, indent) for sub in exc.exceptions)
    notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))
    text = f"{type(exc).__name__}: {exc}{notes}"
    if not type(exc).__module__.startswith("schemathesis"):  # the app raised: a 500 (and no response)
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)
        text = f"unhandled exception in the app (a 500), raised at {where}\n{text}"
    return "\n".join(indent + line for line in text.splitlines())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("service", SERVICES)
def test_schema(service, mode, tmp_path):
    app = service_app(service, tmp_path / "handoff")
    checks = _checks()
    failures = []
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
        if mode is GenerationMode.POSITIVE:
            use_fuzz_bodies(schema)
        for result in schema.get_all_operations():
            operation = result.ok()
            try:
                _run_operation(operation, mode, checks)
            except Unsatisfiable:
                pass  # negative mode, and nothing in this operation to violate (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # Schemathesis' FailureGroup; report every operation
                failures.append(f"--- {service} {operation.label} ({mode.value}):\n{describe(exc)}")
    finally:
        schemathesis_asgi.shutdown_lifespans()
    if failures:
        pytest.fail(f"seed {SEED}, {EXAMPLES} examples per operation\n\n" + "\n\n".join(failures), pytrace=False)


# --------------------------------------------------------------------------- /predict beyond its schema


def _built(builder) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=256).map(lambda b: builder(Choices(b)))


def _reference_bodies() -> st.SearchStrategy[bytes]:
    names = st.one_of(
        st.from_regex(r"[0-9a-f]{32}\.npy", fullmatch=True),
        st.sampled_from(["../etc/passwd", "/etc/passwd", ".tmp-x", "", "a" * 5000, "stored"]),
        st.text(max_size=40),
    )
    docs = st.one_of(
        names.map(lambda n: {"name": n}),
        st.sampled_from([{}, [], None, 1, {"name": None}, {"name": ["x"]}, {"name": {"a": 1}}]),
    )
    return st.one_of(docs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=256))


STORED = "0123456789abcdef0123456789abcdef.npy"  # written to the shared dir with each example's bytes


@pytest.fixture(scope="module")
def model_client(tmp_path_factory):
    """The model app (lifespan running) and an httpx client for it, on an event loop in a thread."""
    from model.app import create_app

    shared = tmp_path_factory.mktemp("handoff")
    app = create_app(make_settings(shared_data_dir=shared))
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
            # An exception the app does not handle comes back as its 500, so the assertion shows the body.
            transport = NetworkASGITransport(app=app, raise_app_exceptions=False)
            client = httpx.AsyncClient(transport=transport, base_url="http://model.test")
            try:
                yield portal, client, shared
            finally:
                portal.call(client.aclose)


@seed(SEED)
@settings(
    max_examples=EXAMPLES * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck), phases=PHASES
)
@given(
    req=st.one_of(
        st.tuples(st.just(NPY), st.one_of(mutated(_seed_files("npy")), _built(npy_from_choices))),
        st.tuples(st.just(JSON), st.one_of(mutated(_seed_files("json")), _built(json_from_choices))),
        st.tuples(st.just(REF), _reference_bodies()),
    ),
    stored=st.one_of(st.none(), mutated(_seed_files("npy")), _built(npy_from_choices)),
)
@example(req=(NPY, None), stored=None)  # None: test.jpg's real tensor, answered with 200
def test_predict_undeclared_media_types(model_client, req, stored):
    """Every body ``/predict`` accepts (.npy, JSON, volume reference) gets a 200 or a 4xx envelope."""
    portal, client, shared = model_client
    media_type, body = req
    if body is None:
        body = _real_tensor()
    if stored is not None:  # a reference to a file that exists, holding anything
        (shared / STORED).write_bytes(stored)
    else:
        (shared / STORED).unlink(missing_ok=True)
    if media_type == REF and body == b'{"name": "stored"}':
        body = json.dumps({"name": STORED}).encode()
    r = portal.call(lambda: client.post("/predict", content=body, headers={"Content-Type": media_type}))
    assert r.status_code < 500, f"{media_type} body {body[:200]!r} → {r.status_code} {r.text[:500]}"
    if r.status_code == 200:
        from ml_pipeline.core import codec

        assert r.headers["content-type"] == NPY
        assert codec.decode(r.content).shape[1:] == (1000,)
    else:
        error = r.json()["error"]
        assert error["status"] == r.status_code and error["code"] and error["message"]


_REAL_TENSOR: list[bytes] = []


def _real_tensor() -> bytes:
    if not _REAL_TENSOR:
        from ml_pipeline.core import codec
        from preprocess import imaging

        tensor = imaging.normalize(imaging.resize_crop(imaging.decode(COFFEE_JPG.read_bytes(), 40_000_000)))
        assert tensor.dtype == np.float32
        _REAL_TENSOR.append(codec.encode(tensor))
    return _REAL_TENSOR[0]
