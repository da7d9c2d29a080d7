"""Stop, start and kill the deployed stack's containers from the tests (through the Docker API).

The compose test run mounts the Docker socket into the `tests` container and names its project in
``STACK_COMPOSE_PROJECT``; containers are found by compose's own labels, so scaled services
(several replicas) are handled one container at a time.
"""

from __future__ import annotations

import time

import docker
from docker.models.containers import Container


class StackControl:
    def __init__(self, project: str, client: docker.DockerClient | None = None) -> None:
        self.project = project
        self.docker = client or docker.from_env()

    def containers(self, service: str, *, include_stopped: bool = False) -> list[Container]:
        """This project's containers of one compose service, in replica-number order."""
        found = self.docker.containers.list(
            all=include_stopped,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]},
        )
        return sorted(found, key=lambda c: int(c.labels.get("com.docker.compose.container-number", "0")))

    def stop(self, service: str, timeout_s: int = 10) -> list[Container]:
        stopped = self.containers(service)
        for container in stopped:
            container.stop(timeout=timeout_s)
        return stopped

    def start(self, containers: list[Container]) -> None:
        for container in containers:
            container.start()

    def kill(self, container: Container) -> None:
        container.kill()

    def wait_healthy(self, container: Container, timeout_s: float = 120) -> None:
        """Wait for a container's compose healthcheck (or, without one, for it to run)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            container.reload()
            state = container.attrs["State"]
            health = state.get("Health", {}).get("Status")
            if state["Running"] and health in (None, "healthy"):
                return
            time.sleep(0.5)
        raise AssertionError(f"{container.name} not healthy after {timeout_s}s: {container.attrs['State']}")
