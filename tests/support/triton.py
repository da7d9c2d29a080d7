"""Inputs for Triton's gRPC client (``tritonclient.grpc`` and its asyncio twin share the class)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as tritongrpc


def grpc_input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> tritongrpc.InferInput:
    """``x`` as the request input ``name``, its contents set from the array."""
    inp = tritongrpc.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp
