"""Copy the config files compose mounts into deploy/k8s/base/config/, where kustomize may read them.

``kubectl apply -k`` (and Argo CD, Flux) render with kustomize's default load restrictor, which
refuses files outside the kustomization's directory. The files stay edited where compose and Swarm
mount them (``otel/``, ``jaeger/``, ``prometheus/``, ``grafana/``, ``edge/``); the copies are
generated, byte for byte, and tests/project/test_kubernetes.py fails while one differs.

    python scripts/k8s_configs.py --write   # after editing one of the sources (make configs)
    python scripts/k8s_configs.py --check   # exit 1 naming the stale copies
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "deploy" / "k8s" / "base" / "config"
# copy (in CONFIG_DIR) ← source (from the repository's root): what the base's configMapGenerator reads
COPIES = {
    "nginx.conf": "edge/nginx.conf",
    "otelcol-config.yml": "otel/otelcol-config.yml",
    "single.yml": "otel/single.yml",
    "router.yml": "otel/router.yml",
    "sampler.yml": "otel/sampler.yml",
    "sampling-all.yml": "otel/sampling-all.yml",
    "sampling-tail.yml": "otel/sampling-tail.yml",
    "otelcol-config-extras.yml": "otel/otelcol-config-extras.yml",
    "jaeger-config.yml": "jaeger/config.yml",
    "prometheus-kubernetes.yml": "prometheus/prometheus-kubernetes.yml",
    "recording.yml": "prometheus/rules/recording.yml",
    "alerts.yml": "prometheus/rules/alerts.yml",
    "datasources.yml": "grafana/provisioning/datasources/datasources.yml",
    "dashboards.yml": "grafana/provisioning/dashboards/dashboards.yml",
    "ml-pipeline.json": "grafana/dashboards/ml-pipeline.json",
}


def stale() -> list[str]:
    """The copies that are missing or differ from their source."""
    return [
        copy
        for copy, source in COPIES.items()
        if not (CONFIG_DIR / copy).is_file() or (CONFIG_DIR / copy).read_bytes() != (ROOT / source).read_bytes()
    ]


def write() -> None:
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    for copy, source in COPIES.items():
        (CONFIG_DIR / copy).write_bytes((ROOT / source).read_bytes())
    extra = sorted(p.name for p in CONFIG_DIR.iterdir() if p.name not in COPIES and p.name != "README.md")
    for name in extra:  # a source no longer copied: its copy goes too
        (CONFIG_DIR / name).unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write every copy")
    action.add_argument("--check", action="store_true", help="exit 1 if a copy is missing or differs")
    args = parser.parse_args(argv)
    if args.write:
        write()
        print(f"wrote {len(COPIES)} files to {CONFIG_DIR.relative_to(ROOT)}")
        return 0
    if out_of_date := stale():
        print(
            f"stale in {CONFIG_DIR.relative_to(ROOT)}: {', '.join(out_of_date)}: python scripts/k8s_configs.py --write"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
