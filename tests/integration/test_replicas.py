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


def test_a_replica_added_later_gets_traffic_within_30_s(stack, stack_control):
    """`docker compose up --scale model=3` (or an autoscaler) while preprocess is connected: the new
    replica must get traffic within 30 s of being healthy — over HTTP the balancer re-resolves the
    name, over gRPC the model ends connections past GRPC_MAX_CONNECTION_AGE_S so clients resolve again."""
    stop = threading.Event()
    served: list[tuple[float, str]] = []
    statuses: list[int] = []

    def stream():
        with httpx.Client(base_url=stack["edge"], timeout=30) as client:
            while not stop.is_set():
                r = finalize(client)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    served.append((time.monotonic(), r.json()["model_instance"]))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    added = None
    try:
        time.sleep(2)  # every client connected to the replicas there are
        added = stack_control.add_replica("model")
        started_at = time.monotonic()
        stack_control.wait_healthy(added)
        healthy_at = time.monotonic()
        new_id = added.attrs["Config"]["Hostname"]
        while time.monotonic() < healthy_at + 30 and not [i for t, i in served if t > healthy_at and i == new_id]:
            time.sleep(0.2)
        first = [t for t, i in served if t > healthy_at and i == new_id]
        assert first, f"the added replica {new_id} got no traffic within 30 s of being healthy"
        print(
            f"added replica {new_id}: healthy {healthy_at - started_at:.1f} s after start, "
            f"traffic {first[0] - healthy_at:.1f} s after that"
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        if added is not None:
            added.stop(timeout=25)  # a graceful drain, as a scale-down: no client request lost
            stack_control.remove(added)
    assert set(statuses) == {200}, collections.Counter(statuses)
