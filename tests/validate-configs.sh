#!/usr/bin/env bash
# Validate the observability configs with the real binaries (the images compose uses):
# the collector and Jaeger configs with `validate`, Prometheus's config and rules with
# `promtool check config` and its alerting/recording rules' unit tests with `promtool test rules`.
set -euo pipefail
cd "$(dirname "$0")/.."
otelcol_image=${OTELCOL_IMAGE:-otel/opentelemetry-collector-contrib:0.140.0}
jaeger_image=${JAEGER_IMAGE:-jaegertracing/jaeger:2.13.0}
prometheus_image=${PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}

# Every role the collectors run (otel/otelcol-config.yml's header), storing all or sampling. The
# router needs the loadbalancing exporter: validated where its image is built (SCALE_OUT=1).
for role in single sampler; do
  for sampling in all tail; do
    docker run --rm -v "$PWD/otel:/etc/otelcol:ro" "$otelcol_image" validate \
      --config=/etc/otelcol/otelcol-config.yml --config=/etc/otelcol/$role.yml \
      --config=/etc/otelcol/sampling-$sampling.yml --config=/etc/otelcol/otelcol-config-extras.yml
    echo "otel/: the $role collector with sampling-$sampling.yml is valid ($otelcol_image)"
  done
done
if [ -n "${OTELCOL_ROUTER_IMAGE:-}" ]; then
  docker run --rm -v "$PWD/otel:/etc/otelcol:ro" "$OTELCOL_ROUTER_IMAGE" validate \
    --config=/etc/otelcol/otelcol-config.yml --config=/etc/otelcol/router.yml --config=/etc/otelcol/otelcol-config-extras.yml
  echo "otel/: the router is valid ($OTELCOL_ROUTER_IMAGE)"
fi
docker run --rm -v "$PWD/jaeger:/etc/jaeger:ro" "$jaeger_image" validate --config=/etc/jaeger/config.yml
echo "jaeger/config.yml: valid ($jaeger_image)"
docker run --rm -v "$PWD/prometheus:/etc/prometheus:ro" --entrypoint promtool "$prometheus_image" \
  check config /etc/prometheus/prometheus.yml
docker run --rm -v "$PWD/prometheus:/etc/prometheus:ro" -w /etc/prometheus --entrypoint promtool "$prometheus_image" \
  test rules tests/rules_test.yml
# The edge's nginx config, with each platform's upstream beside it (`nginx -t` resolves the
# Kubernetes upstream's host name: any address will do for the check).
nginx_image=${NGINX_IMAGE:-nginxinc/nginx-unprivileged:1.28.0-bookworm}
for upstream in edge/upstream-docker.conf deploy/k8s/base/edge-upstream.conf; do
  docker run --rm --read-only --tmpfs /tmp --add-host postprocess:127.0.0.1 \
    -v "$PWD/edge/nginx.conf:/etc/nginx/conf.d/default.conf:ro" -v "$PWD/$upstream:/etc/nginx/conf.d/upstream.conf:ro" \
    "$nginx_image" nginx -t -q
  echo "edge/nginx.conf with $upstream: valid ($nginx_image)"
done
