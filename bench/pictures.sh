#!/usr/bin/env bash
# The docs' pictures, from a real run: the stack as shipped (without Grafana), a few minutes of
# traffic through the edge (steady load, then a burst past capacity so the overload panels have
# something to show), then docs/images/trace.png (one request's trace, from Jaeger's API) and
# docs/images/dashboard.png (every dashboard panel's query against Prometheus):
#   bash bench/pictures.sh             # PICTURES_MINUTES=4
# Nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
project=ml-pipeline-pictures
minutes=${PICTURES_MINUTES:-4}
export COMPOSE_PROFILES=  # no Grafana: what it would draw is drawn from Prometheus instead
export BENCH_OUT=${BENCH_OUT:-$PWD/reports/pictures}
mkdir -p "$BENCH_OUT" docs/images
compose=(docker compose -p "$project" -f docker-compose.yml -f bench/docker-compose.bench.yml)
run=("${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" -v "$PWD/docs:/docs" bench)
down() { "${compose[@]}" --profile bench down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true; }
trap down EXIT
down
"${compose[@]}" --profile bench build
"${compose[@]}" up --detach --wait --wait-timeout 300
steady=$(( minutes * 60 - 60 ))
"${run[@]}" ml-pipeline-bench run http://edge:8080/finalize --image test.jpg -c 2 -d "$steady" --no-progress
"${run[@]}" ml-pipeline-bench run http://edge:8080/finalize --image test.jpg --overload 2 -d 30 --no-progress
sleep 20  # the last scrapes and span batches
"${run[@]}" ml-pipeline-bench trace --jaeger http://jaeger:16686 --request http://edge:8080/finalize \
  --image test.jpg --out /docs/images/trace.png
"${run[@]}" ml-pipeline-bench dashboard --prometheus http://prometheus:9090 \
  --dashboard grafana/dashboards/ml-pipeline.json --minutes "$minutes" --out /docs/images/dashboard.png
