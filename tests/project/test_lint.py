"""The linters pass: ``bash scripts/lint.sh`` (ruff check, ruff format --check, mypy), as a developer
runs it — so CI runs it on every change."""

import os
import subprocess
import sys

from support.data import ROOT


def test_the_codebase_passes_the_linters(tmp_path):
    env = {
        **os.environ,
        # The linters installed beside this interpreter, whether or not its environment is activated.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "RUFF_NO_CACHE": "true",
        "MYPY_CACHE_DIR": str(tmp_path / "mypy"),
    }  # nothing written into the checkout
    out = subprocess.run(["bash", "scripts/lint.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
