"""The committed gRPC descriptor set is what ``bash scripts/protos.sh`` compiles from the .proto."""

import subprocess
import sys

from support.data import ROOT

PROTOS = ROOT / "services" / "ml_pipeline" / "core" / "protos"


def test_the_descriptor_set_is_current(tmp_path):
    out = tmp_path / "open_inference.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--descriptor_set_out={out}",
            "open_inference.proto",
        ],
        check=True,
        timeout=60,
    )
    assert out.read_bytes() == (PROTOS / "open_inference.binpb").read_bytes(), "run: bash scripts/protos.sh"
