"""Reading the hash-pinned lock files (scripts/lock.sh)."""

from __future__ import annotations

import re

PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", re.M)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def pins(text: str) -> dict[str, str]:
    return {normalized(name): version for name, version in PIN.findall(text)}
