"""The yardstick: a straightforward in-process pipeline, written the way one would without any of
this project — Pillow decode, the centre 224 crop of the image scaled to 256 (one Pillow resize of
that box), EfficientNet-Lite's normalisation, one ONNX Runtime session with one thread per process,
softmax and top-5 — in ``workers`` processes (one per core), none of ours in the hot path: no
settings, no spans, no timers, no threads hopping.

``ml-pipeline-bench run straightforward`` drives it closed-loop like any other target; the study
states every other scenario's throughput as a ratio to it.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_session: Any = None


def _load(model_path: str) -> None:
    global _session
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    _session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def image_tensor(data: bytes) -> np.ndarray:
    """An upload → the model's ``[1, 3, 224, 224]`` input: decode, centre crop, normalise."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    side = 224 * min(img.size) / 256  # the centre crop of the image scaled to 256, in its own pixels
    left, top = (img.width - side) / 2, (img.height - side) / 2
    img = img.resize((224, 224), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    return ((np.asarray(img, np.float32).transpose(2, 0, 1) - 127.0) / 128.0)[None]


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    """One image's logits → its five likeliest (class, probability)."""
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return [(int(i), float(p[i])) for i in np.argsort(p)[::-1][:5]]


def classify(data: bytes) -> list[tuple[int, float]]:
    """One image → its top-5 (class, probability), in the worker process."""
    return top5(_session.run(None, {_session.get_inputs()[0].name: image_tensor(data)})[0][0])


class StraightforwardPipeline:
    """``workers`` processes, each with its own single-threaded ONNX Runtime session."""

    def __init__(self, model_path: str | Path, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(self.workers, initializer=_load, initargs=(str(model_path),))

    async def __call__(self, data: bytes) -> list[tuple[int, float]]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, classify, data)

    def start_all(self) -> None:
        """Start every worker now (a pool may start them on demand): each sleeps a moment, so each
        sleep needs a process of its own."""
        list(self._pool.map(time.sleep, [0.2] * self.workers))

    def pids(self) -> list[int]:
        """The worker processes started so far."""
        return list(getattr(self._pool, "_processes", None) or {})

    def close(self) -> None:
        self._pool.shutdown()
