"""``ml-pipeline-bench client-cost``: every client sends both hops' bodies to a real server, and
the table reports each one's CPU in the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_pipeline_bench import client_cost

pytestmark = pytest.mark.slow

IMAGE = Path(__file__).resolve().parents[1] / "data" / "chelsea.jpg"


def test_every_client_calls_both_hops_and_the_table_names_them():
    result = client_cost.measure(IMAGE, rounds=2, requests=20, concurrency=2, log=lambda _: None)
    assert len(result["hops"]) == 2
    for by_client in result["hops"].values():
        assert set(by_client) == set(client_cost.CLIENTS)
        for cell in by_client.values():
            assert len(cell["rounds"]) == 2 and all(ms > 0 for ms in cell["rounds"]), cell
    table = client_cost.markdown(result)
    for name in client_cost.CLIENTS:
        assert f"| {name} |" in table
    assert "| 1.00 |" in table  # httpx is the yardstick of each hop
