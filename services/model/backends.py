"""Model backends: the real EfficientNet-Lite0 on ONNX Runtime, and the seeded fictitious one.

Pipeline core: numpy and onnxruntime only. What a backend needs to know comes as ``BackendOptions``,
which the services' ``InferenceSettings`` satisfy (as would any object with these attributes).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Protocol

import numpy as np

from model.convert import INPUT_NAME, INPUT_SIZE, MODEL_NAME, NUM_CLASSES, OUTPUT_NAME, ensure_model

log = logging.getLogger("model.backends")

INPUT_SHAPE = (3, INPUT_SIZE, INPUT_SIZE)


class BackendOptions(Protocol):
    """Read-only view of what the backends use (properties: any object with these attributes fits)."""

    @property
    def model_backend(self) -> str: ...  # "onnx" or "random"
    @property
    def model_path(self) -> str | os.PathLike[str]: ...  # the .onnx file, converted there when missing
    @property
    def ort_intra_op_threads(self) -> int: ...
    @property
    def ort_inter_op_threads(self) -> int: ...
    @property
    def ort_allow_spinning(self) -> bool: ...


class Backend(Protocol):
    name: str  # model name, e.g. "efficientnet-lite0"
    kind: str  # backend, "onnx" or "random"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``[N,3,224,224]`` float32 → ``[N,1000]`` float32 raw scores (logits). Thread-safe."""


class OnnxBackend:
    kind = "onnx"
    name = MODEL_NAME

    def __init__(self, settings: BackendOptions):
        import onnxruntime as ort

        path = ensure_model(settings.model_path)  # converts once, then cached
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = settings.ort_inter_op_threads
        spin = "1" if settings.ort_allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        log.info("loaded %s from %s", self.name, path, extra={"ort_version": ort.__version__})

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe and releases the GIL.
        outputs: list[np.ndarray] = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return outputs[0]


class RandomBackend:
    """The seminar's fictitious model: deterministic scores seeded from each sample's bytes."""

    kind = "random"
    name = "random-1000"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((batch.shape[0], NUM_CLASSES), dtype=np.float32)
        for i, sample in enumerate(batch):
            seed = int.from_bytes(
                hashlib.blake2b(np.ascontiguousarray(sample).tobytes(), digest_size=8).digest(), "little"
            )
            out[i] = np.random.default_rng(seed).standard_normal(NUM_CLASSES, dtype=np.float32) * 3
        return out


def readiness(backend: Backend | None) -> tuple[bool, str]:
    """A ``/ready`` answer for a service whose backend loads in the background (None until then)."""
    if backend is None:
        return False, "loading"
    return True, f"{backend.name} ({backend.kind}) loaded and warmed up"


def load_backend(settings: BackendOptions) -> Backend:
    backend: Backend = OnnxBackend(settings) if settings.model_backend == "onnx" else RandomBackend()
    backend.predict(np.zeros((1, *INPUT_SHAPE), dtype=np.float32))  # warm-up: first run allocates
    return backend
