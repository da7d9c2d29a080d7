#!/usr/bin/env bash
# The documented soak: the stack as shipped (volume hand-off, the path that could leave files
# behind), 30 minutes of open-loop load at half its measured capacity, then docs/soak.md and
# docs/perf/soak.png:
#   bash bench/soak.sh                  # SOAK_MINUTES=30 SOAK_LOAD=0.5 TRANSPORT=volume
# The CI runs the same check for 3 minutes (tests/integration/test_soak.py). Nothing else should
# run on the machine meanwhile; nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
project=ml-pipeline-soak
minutes=${SOAK_MINUTES:-30}
load=${SOAK_LOAD:-0.5}
export TRANSPORT=${TRANSPORT:-volume}
export COMPOSE_PROFILES=  # no Grafana: it would only compete for the CPU
export BENCH_OUT=${BENCH_OUT:-$PWD/reports/soak}
mkdir -p "$BENCH_OUT"
compose=(docker compose -p "$project" -f docker-compose.yml -f bench/docker-compose.bench.yml)
down() { "${compose[@]}" --profile bench down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true; }
trap down EXIT
down
"${compose[@]}" --profile bench build
"${compose[@]}" up --detach --wait --wait-timeout 300
status=0
"${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" -v "$PWD/docs:/docs" bench \
  ml-pipeline-bench soak http://postprocess:5000/finalize --prometheus http://prometheus:9090 --minutes "$minutes" \
  --load "$load" --image test.jpg --shared-dir /data --stack "docker compose up, TRANSPORT=$TRANSPORT (bash bench/soak.sh)" \
  --out /out/soak.json --report /docs/soak.md || status=$?
"${compose[@]}" ps --all
exit "$status"
