"""deploy/swarm/docker-stack.yml is docker-compose.yml in the format `docker stack deploy` reads:
the same settings, limits, hardening, health checks, images and config files; what differs is
named here. (tests/swarm/ deploys it on a real single-node swarm.)"""

from __future__ import annotations

import re
from typing import Any

import yaml

from support.data import ROOT
from support.docs import section

STACK_FILE = ROOT / "deploy" / "swarm" / "docker-stack.yml"
STACK = yaml.safe_load(STACK_FILE.read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOTENV = dict(
    line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if line and not line.startswith("#")
)
PIPELINE = ("model", "preprocess", "postprocess")
OBSERVABILITY = ("otel-collector", "jaeger", "prometheus", "grafana")
MEMORY = {"1g": "1G", "512m": "512M"}


def defaults(value: Any) -> str:
    """``${VAR:-default}`` → ``default``: what the file means with nothing exported."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def test_the_stack_has_composes_services_but_the_one_shot_jobs():
    # grafana-password: a Swarm secret instead; smoke: a one-shot check of a compose run;
    # otel-sampler: the collector's scale-out (docker-compose.scale-out.yml, Kubernetes prod)
    assert set(STACK["services"]) == set(COMPOSE["services"]) - {"grafana-password", "smoke", "otel-sampler"}
    assert STACK["secrets"]["grafana-admin-password"]["external"] is True


def test_pipeline_settings_are_composes():
    for name in PIPELINE:
        stack = {key: defaults(value) for key, value in STACK["services"][name]["environment"].items()}
        compose = {key: defaults(value) for key, value in COMPOSE["services"][name]["environment"].items()}
        assert stack == compose, name


def test_limits_hardening_health_and_grace_are_composes():
    for name in PIPELINE + OBSERVABILITY:
        stack, compose = STACK["services"][name], COMPOSE["services"][name]
        assert stack["deploy"]["resources"]["limits"] == {"memory": MEMORY[compose["mem_limit"]], "pids": 256}, name
        assert compose["pids_limit"] == 256
        assert stack["read_only"] is True and stack["cap_drop"] == ["ALL"], name
        assert stack["logging"] == compose["logging"], name
        assert {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 16 * 2**20}} in stack["volumes"], name
        for key in ("healthcheck", "stop_grace_period", "init", "command"):
            assert stack.get(key) == compose.get(key), f"{name}: {key}"
    assert STACK["services"]["model"]["deploy"]["replicas"] == "${MODEL_REPLICAS:-2}"
    assert COMPOSE["services"]["model"]["deploy"]["replicas"] == 2


def test_images_default_to_composes_pins():
    for name in OBSERVABILITY:
        assert STACK["services"][name]["image"] == COMPOSE["services"][name]["image"], name
        variable = re.match(r"\$\{([A-Z_]+):-", STACK["services"][name]["image"]).group(1)
        assert defaults(STACK["services"][name]["image"]) == DOTENV[variable], name
    for name in PIPELINE:  # what `docker compose build` tags (project ml-pipeline)
        assert STACK["services"][name]["image"] == f"${{{name.upper()}_IMAGE:-ml-pipeline-{name}:latest}}"


def test_every_config_is_a_file_compose_mounts_at_the_same_place():
    """Compose bind-mounts directories; the stack ships each file as a Swarm config to the same path."""
    for name in OBSERVABILITY:
        mounts = dict(
            v.removeprefix("./").split(":")[:2] for v in COMPOSE["services"][name]["volumes"] if v.startswith("./")
        )
        assert STACK["services"][name]["configs"], name
        for config in STACK["services"][name]["configs"]:  # as deployed with the variables' defaults
            source = (STACK_FILE.parent / defaults(STACK["configs"][config["source"]]["file"])).resolve()
            assert source.is_file(), source
            relative = source.relative_to(ROOT).as_posix()
            (directory,) = [d for d in mounts if relative.startswith(d + "/")]
            target = mounts[directory] + relative.removeprefix(directory)
            assert defaults(config["target"]) == target, f"{name}: {relative}"


def test_the_edge_is_composes():
    """The same image, nginx config, upstream file and entrypoint, health check, limits and hardening."""
    stack, compose = STACK["services"]["edge"], COMPOSE["services"]["edge"]
    assert stack["image"] == compose["image"] and defaults(compose["image"]) == DOTENV["NGINX_IMAGE"]
    mounted = {v.split(":")[1]: v.split(":")[0].removeprefix("./") for v in compose["volumes"]}
    shipped = {c["target"]: STACK["configs"][c["source"]]["file"].removeprefix("../../") for c in stack["configs"]}
    expected = {
        "/etc/nginx/conf.d/default.conf": "edge/nginx.conf",
        "/etc/nginx/conf.d/upstream.conf": "edge/upstream-docker.conf",
        "/etc/nginx/start.sh": "edge/start.sh",
    }
    assert shipped == expected and mounted == expected
    assert stack["entrypoint"] == compose["entrypoint"] == ["bash", "/etc/nginx/start.sh"]
    for key in ("healthcheck", "stop_grace_period"):
        assert stack[key] == compose[key], key
    assert stack["deploy"]["resources"]["limits"] == {"memory": compose["mem_limit"].upper()[:-1] + "M", "pids": 64}
    assert compose["pids_limit"] == 64
    assert stack["read_only"] is True and stack["cap_drop"] == ["ALL"] and stack["logging"] == compose["logging"]
    assert {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 512 * 2**20}} in stack["volumes"]
    assert "/tmp:size=512m" in compose["tmpfs"][0]


def test_every_service_resolves_to_its_tasks_and_publishes_in_host_mode():
    for name, service in STACK["services"].items():
        # dnsrr: the name is every task's address (client-side balancing, one Prometheus target per
        # task); a virtual IP would hide the replicas, and the routing mesh does not forward here.
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        for port in service.get("ports", []):
            assert port["mode"] == "host", name
    assert [p["target"] for p in STACK["services"]["edge"]["ports"]] == [8080]  # the public entry, on 5003
    for name in PIPELINE:
        assert "ports" not in STACK["services"][name], name
    assert STACK["networks"]["ml_net"]["driver"] == "overlay"


def test_the_deploying_page_documents_swarm():
    docs = section("deploying.md", "## Docker Swarm")
    assert "docker stack deploy --compose-file deploy/swarm/docker-stack.yml ml-pipeline" in docs
    assert "docker secret create grafana-admin-password" in docs


def test_prometheus_scrapes_each_task_on_its_metrics_port_which_is_never_published():
    """compose's prometheus.yml, shipped as is, scrapes METRICS_PORT; the service port has no /metrics."""
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    scrape_port = {name: jobs[name]["dns_sd_configs"][0]["port"] for name in PIPELINE}
    for name in PIPELINE:
        for stack_or_compose in (STACK, COMPOSE):
            port = int(defaults(stack_or_compose["services"][name]["environment"]["METRICS_PORT"]))
            assert port == scrape_port[name] != 5000, name
        assert scrape_port[name] not in {p["target"] for p in STACK["services"][name].get("ports", [])}, name
