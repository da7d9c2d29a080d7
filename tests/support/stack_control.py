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

    def add_replica(self, service: str, env: dict[str, str] | None = None) -> Container:
        """Start one more replica of ``service``, as ``docker compose up --scale`` would: the first
        replica's image, settings, mounts, limits and healthcheck, on its networks under the service's
        name (so DNS answers with it too), with the next replica number. Remove it with ``remove``.
        ``env``: settings of its own, over the first replica's."""
        source = self.containers(service)[0]
        config, host_config = source.attrs["Config"], source.attrs["HostConfig"]
        number = 1 + max(
            int(c.labels.get("com.docker.compose.container-number", "0"))
            for c in self.containers(service, include_stopped=True)
        )
        name = f"{self.project}-{service}-{number}"
        networks = source.attrs["NetworkSettings"]["Networks"]
        first, *others = networks
        api = self.docker.api
        created = api.create_container(
            image=config["Image"],
            command=config["Cmd"],
            entrypoint=config["Entrypoint"],
            environment=[*config["Env"], *(f"{key}={value}" for key, value in (env or {}).items())],
            user=config["User"],
            working_dir=config["WorkingDir"],
            labels={**config["Labels"], "com.docker.compose.container-number": str(number)},
            healthcheck=config.get("Healthcheck"),
            stop_signal=config.get("StopSignal"),
            name=name,
            host_config={**host_config, "RestartPolicy": {"Name": "no"}},
            networking_config=api.create_networking_config(
                {first: api.create_endpoint_config(aliases=[service, name])}
            ),
        )
        for network in others:
            api.connect_container_to_network(created["Id"], network, aliases=[service, name])
        container = self.docker.containers.get(created["Id"])
        container.start()
        return container

    def remove(self, container: Container) -> None:
        container.remove(force=True)

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
