"""Reading the documentation pages (docs/, the MkDocs site) that tests hold to the code."""

from __future__ import annotations

import re

from support.data import ROOT

DOCS = ROOT / "docs"


def page(name: str) -> str:
    """The text of ``docs/<name>``."""
    return (DOCS / name).read_text()


def section(name: str, heading: str) -> str:
    """The section of ``docs/<name>`` under the heading ``heading`` (``"## Kubernetes"``): up to the
    next heading of the same or a higher level. Fails when the page has no such heading."""
    level = len(heading) - len(heading.lstrip("#"))
    text = page(name)
    match = re.search(rf"^{re.escape(heading)}\n", text, flags=re.M)
    assert match, f"docs/{name} has no heading {heading!r}"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest
