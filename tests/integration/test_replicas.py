"""Model replicas in the deployed stack: the load is spread over all of them, a killed replica
costs no client request, and a replica that comes back gets traffic again."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time

import httpx
import pytest

from support.data import COFFEE_JPG

pytestmark = pytest.mark.integration


def finalize(client: httpx.Client) -> httpx.Response:
    return client.post("/finalize", files={"file": ("coffee.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})


def replica_ids(stack_control) -> dict[str, object]:
    """service.instance.id (the container's hostname) → container, for every running model replica."""
    return {c.attrs["Config"]["Hostname"]: c for c in stack_control.containers("model")}


def test_requests_spread_over_every_replica(stack, stack_control):
    replicas = replica_ids(stack_control)
    assert len(replicas) >= 2, f"the stack runs {len(replicas)} model replica(s); compose asks for 2"
    with (
        httpx.Client(base_url=stack["edge"], timeout=30) as client,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(lambda _: finalize(client), range(200)))
    assert [a.status_code for a in answers] == [200] * 200
    served = collections.Counter(a.json()["model_instance"] for a in answers)
    assert set(served) == set(replicas), served
    share = {replica: n / 200 for replica, n in served.items()}
    print(f"share of 200 requests per model replica: {share}")
    low, high = (0.35, 0.65) if len(replicas) == 2 else (0.5 / len(replicas), 1.5 / len(replicas))
    assert all(low <= s <= high for s in share.values()), share


def test_a_killed_replica_costs_no_request_and_rejoins_when_back(stack, stack_control):
    replicas = replica_ids(stack_control)
    assert len(replicas) >= 2
    victim_id, victim = sorted(replicas.items())[0]
    stop = threading.Event()
    statuses: list[int] = []
    served: list[tuple[float, str]] = []
    failures: list[str] = []  # what a failed request said, to diagnose it

    def stream():
        with httpx.Client(base_url=stack["edge"], timeout=30) as client:
            while not stop.is_set():
                r = finalize(client)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    served.append((time.monotonic(), r.json()["model_instance"]))
                else:
                    failures.append(r.text[:400])

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        assert victim_id in {instance for _, instance in served}, "the victim served nothing before the kill"
        stack_control.kill(victim)  # SIGKILL: no goodbye, in-flight requests die with it
        killed_at = time.monotonic()
        time.sleep(6)
        assert statuses and set(statuses) == {200}, (collections.Counter(statuses), failures)
        assert not [i for t, i in served if t > killed_at + 1 and i == victim_id], "a dead replica answered"

        victim.start()  # `docker kill` counts as a manual stop: the restart policy leaves it down
        stack_control.wait_healthy(victim)
        back_at = time.monotonic()
        deadline = back_at + 15
        while time.monotonic() < deadline and not [i for t, i in served if t > back_at and i == victim_id]:
            time.sleep(0.2)
        rejoined = [t for t, i in served if t > back_at and i == victim_id]
        assert rejoined, "the restarted replica got no traffic within 15 s of being healthy"
        print(f"replica {victim_id}: traffic again {rejoined[0] - back_at:.1f} s after it was healthy")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert set(statuses) == {200}, (collections.Counter(statuses), failures)
    assert len(statuses) > 50
