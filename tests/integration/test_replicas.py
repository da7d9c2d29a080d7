"""Model replicas in the deployed stack: the load is spread over all of them, a killed replica
costs no client request, and a replica that comes back gets traffic again."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from support.data import COFFEE_JPG

pytestmark = pytest.mark.integration


def finalize(client: httpx.Client) -> httpx.Response:
    return client.post("/finalize", files={"file": ("coffee.jpg", COFFEE_JPG.read_bytes(), "image/jpeg")})


@dataclass
class Traffic:
    """What the clients of ``steady_traffic`` got: every status, which replica answered when, and
    what each failed request said (to diagnose it)."""

    statuses: list[int] = field(default_factory=list)
    served: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def first_served_by(self, replica: str, after: float, within_s: float) -> float | None:
        """When ``replica`` first answered after ``after`` (monotonic), waiting up to ``within_s`` for it."""
        deadline = after + within_s
        while True:
            times = [t for t, i in self.served if t > after and i == replica]
            if times or time.monotonic() >= deadline:
                return times[0] if times else None
            time.sleep(0.2)


@contextlib.contextmanager
def steady_traffic(base_url: str, clients: int = 3) -> Iterator[Traffic]:
    """``clients`` threads posting the photo one request after another until the block ends."""
    traffic = Traffic()
    stop = threading.Event()

    def stream():
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not stop.is_set():
                r = finalize(client)
                traffic.statuses.append(r.status_code)
                if r.status_code == 200:
                    traffic.served.append((time.monotonic(), r.json()["model_instance"]))
                else:
                    traffic.failures.append(r.text[:400])

    threads = [threading.Thread(target=stream) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield traffic
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)


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
    with steady_traffic(stack["edge"]) as traffic:
        statuses, served, failures = traffic.statuses, traffic.served, traffic.failures
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
        rejoined = traffic.first_served_by(victim_id, after=back_at, within_s=15)
        assert rejoined is not None, "the restarted replica got no traffic within 15 s of being healthy"
        print(f"replica {victim_id}: traffic again {rejoined - back_at:.1f} s after it was healthy")
    assert set(statuses) == {200}, (collections.Counter(statuses), failures)
    assert len(statuses) > 50


def test_a_replica_added_later_gets_traffic_within_30_s(stack, stack_control):
    """`docker compose up --scale model=3` (or an autoscaler) while preprocess is connected: the new
    replica must get traffic within 30 s of being healthy — over HTTP the balancer re-resolves the
    name, over gRPC the model ends connections past GRPC_MAX_CONNECTION_AGE_S so clients resolve again."""
    added = None
    try:
        with steady_traffic(stack["edge"]) as traffic:
            time.sleep(2)  # every client connected to the replicas there are
            added = stack_control.add_replica("model")
            started_at = time.monotonic()
            stack_control.wait_healthy(added)
            healthy_at = time.monotonic()
            new_id = added.attrs["Config"]["Hostname"]
            first = traffic.first_served_by(new_id, after=healthy_at, within_s=30)
            assert first is not None, f"the added replica {new_id} got no traffic within 30 s of being healthy"
            print(
                f"added replica {new_id}: healthy {healthy_at - started_at:.1f} s after start, "
                f"traffic {first - healthy_at:.1f} s after that"
            )
    finally:
        if added is not None:
            added.stop(timeout=25)  # a graceful drain, as a scale-down: no client request lost
            stack_control.remove(added)
    assert set(traffic.statuses) == {200}, collections.Counter(traffic.statuses)
