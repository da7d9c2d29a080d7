"""The coverage-guided fuzzers, bounded for CI, and every crash they ever found as a regression test.

``test_fuzz_target`` runs each target of ``fuzz_targets.py`` under atheris for ``FUZZ_RUNS`` inputs
(default 2000, a few seconds each) from a copy of its seed corpus, with a fixed ``-seed`` (``FUZZ_SEED``,
default 1) so that a CI failure reproduces. A crash fails the test with the input (base64) and the
path libFuzzer wrote it to: commit it to ``tests/data/fuzz/regressions/<target>/`` under a name that
says what it is, and ``test_regression`` replays it on every run from then on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from base64 import b64encode
from pathlib import Path

import fuzz_targets
import pytest
from fuzz_targets import REGRESSIONS, SEEDS, TARGETS, run_input

HERE = Path(__file__).resolve().parent
RUNS = int(os.environ.get("FUZZ_RUNS", "2000"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))
TIMEOUT_S = int(os.environ.get("FUZZ_TIMEOUT_S", "300"))  # the whole run, per target
EXTRA_FLAGS = {
    "image": ["-max_len=4096"],
    "npy": ["-max_len=4096", f"-dict={HERE / 'npy.dict'}"],
    "json": ["-max_len=4096", f"-dict={HERE / 'json.dict'}"],
    "oip": ["-max_len=4096", f"-dict={HERE / 'oip.dict'}"],
}


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")


def _cases(root: Path) -> list:
    return [pytest.param(t, p, id=f"{t}/{p.name}") for t in TARGETS for p in _files(root / t)]


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_target(target, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS / target, corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    command = [
        sys.executable,
        fuzz_targets.__file__,
        target,
        f"-runs={RUNS}",
        f"-seed={SEED}",
        "-timeout=30",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        *EXTRA_FLAGS[target],
        str(corpus),
    ]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S, cwd=tmp_path
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{target}: {RUNS} runs took more than {TIMEOUT_S} s\n{(exc.stderr or b'')[-3000:]!r}")
    found = _files(artifacts)
    if proc.returncode == 0 and not found:
        return
    rerun = " ".join([*command[:-1], f"<a fresh copy of {SEEDS.relative_to(fuzz_targets.ROOT) / target}>"])
    lines = [f"fuzz target {target!r} failed (exit {proc.returncode}); the same run again: {rerun}", ""]
    for path in found:
        data = path.read_bytes()
        lines += [
            f"{path.name.split('-')[0]} input: {path}  ({len(data)} bytes)",
            f"  base64: {b64encode(data).decode()}" if len(data) <= 8192 else "  (too long to print)",
            f"  body: {fuzz_targets.body_of(target, data)[:300]!r}",
            f"  replay: python tests/fuzz/fuzz_targets.py {target} --replay {path}",
            f"  -> commit it as tests/data/fuzz/regressions/{target}/<ExceptionType>-<what-it-is>"
            f" (`base64 -d` of the base64 line above); test_regression then replays it on every run.",
            "",
        ]
    lines += ["--- the exception (fuzzer's stdout) ---", proc.stdout[-6000:], "--- libFuzzer (stderr, tail) ---"]
    lines += [line for line in proc.stderr.splitlines() if not line.startswith(("INFO: Instrumenting", "#"))][-40:]
    pytest.fail("\n".join(lines), pytrace=False)


@pytest.mark.parametrize("target, path", _cases(REGRESSIONS))
def test_regression(target, path):
    """An input a fuzzer once crashed on: now a 4xx or a result, never anything else."""
    run_input(target, path.read_bytes())


@pytest.mark.parametrize("target, path", _cases(SEEDS))
def test_seed(target, path):
    """The seed corpora are inputs the targets accept (a fuzzer starting from broken seeds finds less)."""
    run_input(target, path.read_bytes())
