"""The provisioned Grafana dashboards and datasources, read from the repository's files.

Grafana itself does not run in the test stack (no image on CI's machine), so the tests check the
files' structure here and evaluate every panel query against the live Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ml_pipeline_bench.dashboard import expand

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    datasource_uid: str
    expr: str
    exemplar: bool

    def promql(self) -> str:
        return expand(self.expr)


def provisioned_datasources() -> dict[str, dict]:
    return {ds["uid"]: ds for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def panel_queries() -> list[PanelQuery]:
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
                queries.append(
                    PanelQuery(
                        path.name, panel["title"], target["refId"], uid, target["expr"], bool(target.get("exemplar"))
                    )
                )
    return queries


def unresolved_variables(text: str) -> list[str]:
    return re.findall(r"\$\{?[A-Za-z_][A-Za-z0-9_]*", text)
