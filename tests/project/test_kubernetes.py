"""deploy/k8s/: every overlay rendered by kustomize v5.7.1, every object validated strictly against
the Kubernetes schemas offline, and the policies a reviewer would check by hand: probes, limits,
locked-down containers, selectors that match, ConfigMaps that exist, nothing forked from compose."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ml_pipeline.cli import uvicorn_config
from support.data import ROOT
from support.docs import section
from support.tools import missing, tool

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUSTOMIZE_VERSION = "v5.7.1"
# The oldest Kubernetes the manifests are for (the preStop `sleep` action is on by default from
# 1.30) and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
PIPELINE = ("model", "preprocess", "postprocess")
# A Secret the operator creates (docs/deploying.md): never rendered, since a password is never committed.
EXTERNAL_SECRETS = {"grafana-admin"}
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOTENV = dict(
    line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if line and not line.startswith("#")
)


KUSTOMIZE_INSTALL = f"go install sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"


@functools.cache
def _kustomize_version(path: str) -> str:
    return subprocess.run([path, "version"], capture_output=True, text=True, check=True).stdout


def _kustomize() -> str:
    """kustomize at the pinned version; without it the test skips (fails under REQUIRE_TOOLS=1)."""
    path = tool("kustomize", KUSTOMIZE_INSTALL)
    version = _kustomize_version(path)
    if KUSTOMIZE_VERSION not in version:
        missing(f"kustomize {KUSTOMIZE_VERSION} (found {version.strip()!r})", KUSTOMIZE_INSTALL)
    return path


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kustomize build`` makes of an overlay, as docs/deploying.md tells users to run it."""
    out = subprocess.run(
        [_kustomize(), "build", str(K8S / "overlays" / overlay)],  # the default load restrictor, as `kubectl apply -k`
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(objects, kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_specs(objects) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, deployment in of_kind(objects, "Deployment").items():
        yield name, deployment["spec"]["template"]["spec"]


def containers(objects) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, pod in pod_specs(objects):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{name}/{container['name']}", container, pod


@pytest.fixture(params=OVERLAYS)
def objects(request):
    return render(request.param)


# --- rendering and schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_apply_k_builds_every_overlay(overlay):
    """`kubectl apply -k` (Argo CD, Flux) render with the root-only load restrictor: every file an
    overlay reads lies inside deploy/k8s, so the build needs no flag."""
    out = subprocess.run(
        [_kustomize(), "build", "--load-restrictor", "LoadRestrictionsRootOnly", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc) == render(overlay)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes_strictly(objects, version):
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Role"} <= kinds
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {error.message}")


def test_strict_validation_catches_an_unknown_field():
    """The validation can fail: a misspelt field is refused, not ignored."""
    deployment = dict(of_kind(render("dev"), "Deployment")["model"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_object_lands_in_the_overlays_namespace():
    for overlay, namespace in (("dev", "ml-pipeline-dev"), ("prod", "ml-pipeline")):
        objects = render(overlay)
        assert {obj["metadata"].get("namespace") for obj in objects} == {namespace}
        (binding,) = of_kind(objects, "RoleBinding").values()
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}]


# --- policies -------------------------------------------------------------------------------------


def test_every_container_has_startup_readiness_and_liveness_probes_on_a_port_it_opens(objects):
    for name, container, _ in containers(objects):
        ports = {port["name"] for port in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{name} has no {probe}"
            assert container[probe]["httpGet"]["port"] in ports, f"{name}'s {probe} asks a port it does not open"


def test_pipeline_probes_ask_the_services_own_routes(objects):
    for name in PIPELINE:
        (container,) = of_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_every_container_has_cpu_and_memory_requests_and_limits(objects):
    for name, container, _ in containers(objects):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name} has no cpu/memory {kind}"


def test_every_container_is_non_root_read_only_and_without_capabilities(objects):
    for name, container, pod in containers(objects):
        pod_security = pod["securityContext"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, name
        assert security.get("runAsUser", pod_security.get("runAsUser", 0)) != 0, name
        assert "privileged" not in security or security["privileged"] is False, name
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}, name
    for name, pod in pod_specs(objects):
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name


def test_only_prometheus_gets_a_kubernetes_api_token(objects):
    for name, pod in pod_specs(objects):
        if name == "prometheus":
            assert pod["serviceAccountName"] == "prometheus"
        else:
            assert pod["automountServiceAccountToken"] is False, name
    (role,) = of_kind(objects, "Role").values()
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_every_service_selects_a_deployments_pods_and_targets_a_port_they_open(objects):
    deployments = of_kind(objects, "Deployment")
    for name, service in of_kind(objects, "Service").items():
        selector = service["spec"]["selector"]
        matches = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            and d["metadata"].get("namespace") == service["metadata"].get("namespace")
        ]
        assert matches, f"Service {name} selects no Deployment's pods"
        for deployment in matches:
            opened = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in opened, f"Service {name} targets {port['targetPort']}, never opened"


def test_every_deployment_selector_matches_its_own_pods_and_every_budget_and_autoscaler_a_deployment(objects):
    deployments = of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert set(PIPELINE) <= set(budgets)
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()
        )
        assert budget["spec"]["maxUnavailable"] == 1, name  # never blocks a drain, even at one replica …
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name  # … nor while not ready
    for name, autoscaler in of_kind(objects, "HorizontalPodAutoscaler").items():
        assert autoscaler["spec"]["scaleTargetRef"]["name"] in deployments, name


def test_every_configmap_and_secret_the_pods_read_exists(objects):
    configmaps = set(of_kind(objects, "ConfigMap"))
    secrets = set(of_kind(objects, "Secret")) | EXTERNAL_SECRETS
    for name, container, pod in containers(objects):
        wanted = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        wanted |= {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
        assert wanted <= configmaps, f"{name} reads missing ConfigMaps {wanted - configmaps}"
        wanted_secrets = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        assert wanted_secrets <= secrets, f"{name} reads missing Secrets {wanted_secrets - secrets}"
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in pod.get("volumes", [])}, name


def _with_model_container(objects, key: str, value: Any) -> list[dict[str, Any]]:
    """The objects with the model's container changed (``value=None``: ``key`` removed)."""
    deployment = of_kind(objects, "Deployment")["model"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    changed = {k: v for k, v in container.items() if k != key}
    if value is not None:
        changed[key] = value
    spec = {**template["spec"], "containers": [changed]}
    copy = {**deployment, "spec": {**deployment["spec"], "template": {**template, "spec": spec}}}
    return [copy if obj is deployment else obj for obj in objects]


def test_the_policy_checks_can_fail():
    """Each policy above against the rendered objects with the one thing it guards broken."""
    objects = render("dev")
    (container,) = of_kind(objects, "Deployment")["model"]["spec"]["template"]["spec"]["containers"]
    for check, key, broken in (
        (test_every_container_has_startup_readiness_and_liveness_probes_on_a_port_it_opens, "livenessProbe", None),
        (
            test_every_container_has_cpu_and_memory_requests_and_limits,
            "resources",
            {"requests": container["resources"]["requests"]},
        ),
        (
            test_every_container_is_non_root_read_only_and_without_capabilities,
            "securityContext",
            {**container["securityContext"], "readOnlyRootFilesystem": False},
        ),
        (
            test_every_configmap_and_secret_the_pods_read_exists,
            "envFrom",
            [{"configMapRef": {"name": "no-such-config"}}],
        ),
    ):
        check(objects)  # passes as rendered …
        with pytest.raises(AssertionError):  # … and fails with the one thing broken
            check(_with_model_container(objects, key, broken))
    service = {**of_kind(objects, "Service")["model"]}
    service["spec"] = {**service["spec"], "selector": {"app.kubernetes.io/name": "modle"}}
    with pytest.raises(AssertionError, match="selects no Deployment"):
        test_every_service_selects_a_deployments_pods_and_targets_a_port_they_open([*objects, service])


# --- the pipeline on Kubernetes -------------------------------------------------------------------


def test_model_and_preprocess_services_are_headless_so_client_side_balancing_sees_every_pod(objects):
    services = of_kind(objects, "Service")
    assert services["model"]["spec"]["clusterIP"] == "None"
    assert services["preprocess"]["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in services["postprocess"]["spec"]  # the entry point: one virtual address
    assert {p["port"] for p in services["model"]["spec"]["ports"]} == {5000, 8001}


def test_the_edge_is_the_entry_and_mounts_its_config_where_nginx_reads_it(objects):
    """The edge's Service is the one to publish; its pod reads compose's nginx config plus this
    platform's upstream from conf.d, with /tmp in memory for the bodies it buffers."""
    services, deployments = of_kind(objects, "Service"), of_kind(objects, "Deployment")
    assert services["edge"]["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    pod = deployments["edge"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"config": "/etc/nginx/conf.d", "tmp": "/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"].startswith("edge-config")
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert pod["securityContext"]["runAsUser"] == 101  # nginx-unprivileged's user


def test_graceful_termination_outlasts_the_prestop_sleep_and_uvicorns_drain(objects):
    drain_s = uvicorn_config("x:app", "127.0.0.1", 0).timeout_graceful_shutdown
    for name in PIPELINE:
        pod = of_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop_s >= 3, name  # long enough for callers' DNS refresh and kube-proxy
        assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s, name


def _compose_defaults(service: str) -> dict[str, str]:
    """A compose service's environment with every ``${VAR:-default}`` resolved to its default."""
    env = COMPOSE["services"][service]["environment"]
    return {key: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()}


# On Kubernetes only: the pod's identity on every span. In compose only: the volume hand-off.
KUBERNETES_ONLY_ENV = {"POD_NAME", "POD_NAMESPACE", "NODE_NAME", "OTEL_RESOURCE_ATTRIBUTES"}
COMPOSE_ONLY_ENV = {"SHARED_DATA_DIR", "HANDOFF_FILE_TTL_S"}
# What prod changes on purpose: it stores the tail sampler's choice, not every trace (issue 26).
PROD_ENV = {"TRACE_SAMPLING": "tail"}


def test_pipeline_settings_are_composes_not_a_fork():
    """Every setting compose gives a service, its pod gets with the same default value (prod; dev
    changes LOG_LEVEL on purpose); the only differences are named."""
    objects = render("prod")
    configmaps = of_kind(objects, "ConfigMap")
    for name in PIPELINE:
        (container,) = of_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        for source in container.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        compose = _compose_defaults(name)
        assert set(env) - KUBERNETES_ONLY_ENV == set(compose) - COMPOSE_ONLY_ENV, name
        for key in set(compose) - COMPOSE_ONLY_ENV:
            expected = PROD_ENV.get(key, compose[key])
            assert env[key] == expected, f"{name}: {key}={env[key]!r} on Kubernetes, {compose[key]!r} in compose"
    assert _compose_defaults("preprocess")["TRANSPORT"] == "http"  # so the volume hand-off is off in both


def test_images_are_composes_pins_and_the_pipelines_own_names():
    objects = render("prod")
    images = {name: container["image"] for name, container, _ in containers(objects)}
    for name in PIPELINE:
        assert images[f"{name}/{name}"] == f"ml-pipeline-{name}:latest"  # what `docker compose build` tags
    pins = {
        "otel-collector/otel-collector": "OTELCOL_IMAGE",
        "otel-sampler/otel-sampler": "OTELCOL_IMAGE",
        "jaeger/jaeger": "JAEGER_IMAGE",
        "prometheus/prometheus": "PROMETHEUS_IMAGE",
        "grafana/grafana": "GRAFANA_IMAGE",
        "edge/edge": "NGINX_IMAGE",
    }
    for container, variable in pins.items():
        assert images[container] == DOTENV[variable], container


def test_observability_configs_are_the_files_compose_mounts():
    configmaps = {re.sub(r"-[a-z0-9]{10}$", "", name): cm for name, cm in of_kind(render("prod"), "ConfigMap").items()}
    same_files = {
        "otel-collector-config": {
            "otelcol-config.yml": "otel/otelcol-config.yml",
            "single.yml": "otel/single.yml",
            "router.yml": "otel/router.yml",
            "sampler.yml": "otel/sampler.yml",
            "sampling-all.yml": "otel/sampling-all.yml",
            "sampling-tail.yml": "otel/sampling-tail.yml",
            "otelcol-config-extras.yml": "otel/otelcol-config-extras.yml",
        },
        "jaeger-config": {"config.yml": "jaeger/config.yml"},
        "prometheus-config": {"prometheus.yml": "prometheus/prometheus-kubernetes.yml"},
        "prometheus-rules": {
            "recording.yml": "prometheus/rules/recording.yml",
            "alerts.yml": "prometheus/rules/alerts.yml",
        },
        "grafana-datasources": {"datasources.yml": "grafana/provisioning/datasources/datasources.yml"},
        "grafana-dashboard-providers": {"dashboards.yml": "grafana/provisioning/dashboards/dashboards.yml"},
        "grafana-dashboards": {"ml-pipeline.json": "grafana/dashboards/ml-pipeline.json"},
        "edge-config": {"default.conf": "edge/nginx.conf", "upstream.conf": "deploy/k8s/base/edge-upstream.conf"},
    }
    for name, files in same_files.items():
        assert configmaps[name]["data"] == {key: (ROOT / path).read_text() for key, path in files.items()}, name


def test_dev_runs_one_of_everything_and_prod_scales_the_model():
    dev, prod = render("dev"), render("prod")
    assert {d["spec"]["replicas"] for d in of_kind(dev, "Deployment").values()} == {1}
    assert not of_kind(dev, "HorizontalPodAutoscaler")
    prod_deployments = of_kind(prod, "Deployment")
    autoscaler = of_kind(prod, "HorizontalPodAutoscaler")["model"]
    assert "replicas" not in prod_deployments["model"]["spec"]  # the autoscaler's to set, never reset by an apply
    assert autoscaler["spec"]["minReplicas"] >= 3
    assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
    assert prod_deployments["preprocess"]["spec"]["replicas"] >= 2
    assert prod_deployments["postprocess"]["spec"]["replicas"] >= 2


# --- Prometheus finds pods through the Kubernetes API ---------------------------------------------

PROMETHEUS = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
PROMETHEUS_K8S = yaml.safe_load((ROOT / "prometheus" / "prometheus-kubernetes.yml").read_text())


def test_kubernetes_prometheus_config_keeps_composes_jobs_rules_and_intervals():
    assert PROMETHEUS_K8S["global"] == PROMETHEUS["global"]
    assert PROMETHEUS_K8S["rule_files"] == PROMETHEUS["rule_files"]
    jobs = [job["job_name"] for job in PROMETHEUS_K8S["scrape_configs"]]
    assert jobs == [job["job_name"] for job in PROMETHEUS["scrape_configs"]]
    for job in PROMETHEUS_K8S["scrape_configs"]:
        if job["job_name"] in PIPELINE:
            assert "dns_sd_configs" not in job
            assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"own_namespace": True}}]
            keep = job["relabel_configs"][0]
            assert keep["action"] == "keep" and keep["regex"] == f"{job['job_name']};metrics;Running"


def test_kubernetes_prometheus_config_is_valid_for_promtool():
    promtool = tool("promtool", "build it from github.com/prometheus/prometheus's cmd/promtool (tests/Dockerfile)")
    out = subprocess.run(
        [promtool, "check", "config", str(ROOT / "prometheus" / "prometheus-kubernetes.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_pipeline_container_opens_the_port_prometheus_keeps():
    """The pod's `metrics` port is where the service serves them: METRICS_PORT, compose's port."""
    objects = render("prod")
    configmaps = of_kind(objects, "ConfigMap")
    compose_port = {
        job["job_name"]: job["dns_sd_configs"][0]["port"]
        for job in PROMETHEUS["scrape_configs"]
        if job["job_name"] in PIPELINE
    }
    for name in PIPELINE:
        (container,) = of_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
        env = {
            key: value
            for ref in container["envFrom"]
            for key, value in configmaps[ref["configMapRef"]["name"]]["data"].items()
        }
        env.update({e["name"]: e.get("value") for e in container["env"]})
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["http"] == 5000 and ports["metrics"] == int(env["METRICS_PORT"]) == compose_port[name], name
        assert ports["metrics"] != ports["http"], name


def test_no_service_exposes_the_pipelines_metrics_port(objects):
    """Metrics are Prometheus's, scraped from each pod: no Service (the entry's least of all) routes to them."""
    pipeline_pods = [
        of_kind(objects, "Deployment")[name]["spec"]["template"]["metadata"]["labels"] for name in PIPELINE
    ]
    for name, service in of_kind(objects, "Service").items():
        selector = service["spec"]["selector"].items()
        if not any(selector <= labels.items() for labels in pipeline_pods):
            continue  # Jaeger's and the collector's own metrics ports are theirs
        for port in service["spec"]["ports"]:
            assert port["targetPort"] != "metrics" and 9464 not in (port["port"], port["targetPort"]), name


def test_the_deploying_page_documents_the_kubernetes_commands():
    docs = section("deploying.md", "## Kubernetes")
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in docs
    assert "LoadRestrictionsNone" not in docs
    assert "create secret generic grafana-admin" in docs


def test_the_config_copies_kustomize_reads_are_the_files_compose_mounts():
    """deploy/k8s/base/config/ holds byte-for-byte copies (scripts/k8s_configs.py): one source each."""
    spec = importlib.util.spec_from_file_location("k8s_configs", ROOT / "scripts" / "k8s_configs.py")
    assert spec and spec.loader
    k8s_configs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(k8s_configs)
    assert k8s_configs.stale() == [], "python scripts/k8s_configs.py --write"
    copies = {p.name for p in k8s_configs.CONFIG_DIR.iterdir()} - {"README.md"}
    assert copies == set(k8s_configs.COPIES)
    base = (K8S / "base" / "kustomization.yaml").read_text()
    read = set(re.findall(r"config/([\w.-]+)", base))
    assert read == set(k8s_configs.COPIES), "every copy is read by the base, and only copies"
    assert "../" not in base


# --- the collector: one in dev, a router in front of samplers in prod (issue 26) -------------------


def _config_files(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The --config files a collector container runs, with Kubernetes's $(VAR) expanded."""
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    return [a.removeprefix("--config=/etc/otelcol/") for a in args if a.startswith("--config=")]


def _collector_env(objects, container: dict[str, Any]) -> dict[str, str]:
    configmaps = of_kind(objects, "ConfigMap")
    return {
        e["name"]: configmaps[e["valueFrom"]["configMapKeyRef"]["name"]]["data"][
            e["valueFrom"]["configMapKeyRef"]["key"]
        ]
        for e in container.get("env", [])
    }


def test_dev_runs_one_collector_storing_every_trace():
    objects = render("dev")
    assert "otel-sampler" not in of_kind(objects, "Deployment")
    (container,) = of_kind(objects, "Deployment")["otel-collector"]["spec"]["template"]["spec"]["containers"]
    files = _config_files(container, _collector_env(objects, container))
    assert files == ["otelcol-config.yml", "single.yml", "sampling-all.yml", "otelcol-config-extras.yml"]


def test_prod_routes_each_trace_to_one_of_the_samplers_which_sample():
    objects = render("prod")
    deployments = of_kind(objects, "Deployment")
    (router,) = deployments["otel-collector"]["spec"]["template"]["spec"]["containers"]
    assert _config_files(router, {}) == ["otelcol-config.yml", "router.yml", "otelcol-config-extras.yml"]
    (sampler,) = deployments["otel-sampler"]["spec"]["template"]["spec"]["containers"]
    assert deployments["otel-sampler"]["spec"]["replicas"] >= 2
    env = _collector_env(objects, sampler)
    assert env == {"TRACE_SAMPLING": "tail", "TRACE_KEEP_PERCENT": "10", "TRACE_SLOW_MS": "500"}
    assert _config_files(sampler, env) == [
        "otelcol-config.yml",
        "sampler.yml",
        "sampling-tail.yml",
        "otelcol-config-extras.yml",
    ]
    # The router's DNS resolver finds every sampler pod: a headless Service of that name, OTLP/gRPC.
    service = of_kind(objects, "Service")["otel-sampler"]["spec"]
    assert service["clusterIP"] == "None" and service["selector"] == {"app.kubernetes.io/name": "otel-sampler"}
    router_config = yaml.safe_load((ROOT / "otel" / "router.yml").read_text())
    dns = router_config["exporters"]["loadbalancing"]["resolver"]["dns"]
    assert dns["hostname"].endswith(":-otel-sampler}") and int(dns["port"]) == service["ports"][0]["port"] == 4317
    assert router_config["exporters"]["loadbalancing"]["routing_key"] == "traceID"
    # Both collectors' ports the Prometheus job keeps: span metrics and their own metrics.
    for container in (router, sampler):
        assert {"metrics", "telemetry"} <= {port["name"] for port in container["ports"]}
