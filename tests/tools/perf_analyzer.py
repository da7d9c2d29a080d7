"""Install perf_analyzer, Triton's benchmark client, where no Triton image or GPU is: pip downloads
the two wheels of tests/requirements-perf-analyzer.lock with their hashes checked, and two files
come out of them, the perf_analyzer binary (tritonclient 2.51.0's manylinux wheel) and
libcudart.so.12 (NVIDIA's CUDA runtime wheel: perf_analyzer links against it, and runs without a
GPU), beside a launcher that makes the binary find that library. Its other libraries are the
system's (glibc 2.34 or later, libstdc++, OpenSSL 3, zlib) and libb64.so.0d, Debian's libb64-0d.

    python3 tests/tools/perf_analyzer.py /opt/perf_analyzer    # then /opt/perf_analyzer/bin/perf_analyzer --version

The test image runs this in a build stage (tests/Dockerfile); tests/integration/test_perf_analyzer.py runs it.
"""

import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements-perf-analyzer.lock"
BINARY_SUFFIX = ".data/data/bin/perf_analyzer"  # in tritonclient-<version>.data/
LIBRARY = "nvidia/cuda_runtime/lib/libcudart.so.12"
LAUNCHER = """#!/bin/sh
# perf_analyzer with the CUDA runtime library it links against (written by tests/tools/perf_analyzer.py)
LD_LIBRARY_PATH="{lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "{binary}" "$@"
"""


def extract(wheel: Path, suffix: str, target: Path, mode: int) -> None:
    with zipfile.ZipFile(wheel) as zf:
        [name] = [n for n in zf.namelist() if n.endswith(suffix)]
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    target.chmod(mode)  # zipfile drops the permission bits


def main(prefix: str, lock: Path = LOCK) -> None:
    root = Path(prefix).resolve()
    arch = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine()]
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:"),
                *("--platform", f"manylinux2014_{arch}", "--dest", wheels, "--requirement", str(lock)),
            ],
            check=True,
        )
        downloaded = {wheel.name.split("-")[0]: wheel for wheel in Path(wheels).glob("*.whl")}
        binary, library = root / "libexec" / "perf_analyzer", root / "lib" / "libcudart.so.12"
        extract(downloaded["tritonclient"], BINARY_SUFFIX, binary, 0o755)
        extract(downloaded["nvidia_cuda_runtime_cu12"], LIBRARY, library, 0o644)
    launcher = root / "bin" / "perf_analyzer"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER.format(lib=library.parent, binary=binary))
    launcher.chmod(0o755)
    print(f"{launcher}: perf_analyzer (needs libb64.so.0d: apt-get install libb64-0d)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else LOCK)
