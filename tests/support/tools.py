"""External programs some tests need (kustomize, promtool, wrk): the test image has them all.

Without one, a test skips, naming the tool and how to get it, so a contributor's plain ``pytest``
passes on a machine that has only Python. ``REQUIRE_TOOLS=1`` (set by ``bash tests/run.sh`` for
its test container, and so in CI) turns a missing tool into a failure, never a skip — as
``REQUIRE_STACK=1`` does for the deployed stack.
"""

from __future__ import annotations

import os
import shutil

import pytest


def tools_required() -> bool:
    return os.environ.get("REQUIRE_TOOLS") == "1"


def missing(name: str, install: str) -> None:
    """Skip the calling test (fail under ``REQUIRE_TOOLS=1``): ``name`` is not installed."""
    reason = f"{name} is not installed (the test image has it; REQUIRE_TOOLS=1 fails instead): {install}"
    if tools_required():
        pytest.fail(reason)
    pytest.skip(reason)


def tool(name: str, install: str) -> str:
    """The path of the program ``name`` (``$NAME`` if set, else from ``PATH``), or skip/fail as above."""
    path = os.environ.get(name.upper()) or shutil.which(name)
    if not path:
        missing(name, install)
    assert path
    return path
