"""Tests that need an external program skip without it on a contributor's machine, and fail
instead in the test run (REQUIRE_TOOLS=1), where the test image has every one of them."""

from __future__ import annotations

import pytest
import yaml
from _pytest.outcomes import Failed, Skipped

from support.data import ROOT
from support.tools import tool


class _ComposeLoader(yaml.SafeLoader):
    """Compose's own tags (`!reset []`) read as plain values."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))


def test_the_test_run_requires_the_tools_and_the_stack():
    compose = yaml.load((ROOT / "tests" / "docker-compose.test.yml").read_text(), Loader=_ComposeLoader)
    environment = compose["services"]["tests"]["environment"]
    assert environment["REQUIRE_TOOLS"] == "1" and environment["REQUIRE_STACK"] == "1"


def test_a_missing_tool_is_a_skip_that_names_it_and_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("NO_SUCH_TOOL", raising=False)
    monkeypatch.delenv("REQUIRE_TOOLS", raising=False)
    with pytest.raises(Skipped, match=r"no-such-tool is not installed .*: apt-get install it"):
        tool("no-such-tool", "apt-get install it")


def test_a_missing_tool_fails_where_tools_are_required(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("REQUIRE_TOOLS", "1")
    with pytest.raises(Failed, match="no-such-tool is not installed"):
        tool("no-such-tool", "apt-get install it")


def test_a_tool_is_found_on_the_path_or_named_by_its_variable(monkeypatch, tmp_path):
    program = tmp_path / "some-tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tool("some-tool", "-") == str(program)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("KUSTOMIZE", "/opt/kustomize")
    assert tool("kustomize", "-") == "/opt/kustomize"
