#!/usr/bin/env bash
# Interleaved A/B of one setting of the three services, in one run on one machine: each service's
# CPU per request (its own process counter, every replica) and the chain's throughput and p50 under
# the same closed-loop load. A and B alternate, the order flips every pair (the second run of a
# pair measured 6-9 % faster whatever it ran: docs/profiling.md), every run on freshly started
# service containers.
#   bash bench/ab.sh EVENT_LOOP asyncio uvloop    # → reports/ab/EVENT_LOOP.md (+ one JSON per run)
# AB_PAIRS (3), AB_SECONDS (30 per run, after 50 warm-up requests), AB_CONCURRENCY (2). The setting
# must reach the services: bench/docker-compose.bench.yml passes the ones compared so far.
# Nothing else may run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash bench/ab.sh SETTING VALUE_A VALUE_B"
setting=${1:?$usage}
a=${2:?$usage}
b=${3:?$usage}
pairs=${AB_PAIRS:-3}
seconds=${AB_SECONDS:-30}
concurrency=${AB_CONCURRENCY:-2}
out=reports/ab
project=ml-pipeline-ab
export COMPOSE_PROFILES= BENCH_OUT=./$out
compose=(docker compose -p "$project" -f docker-compose.yml -f bench/docker-compose.bench.yml)

down() { "${compose[@]}" --profile bench down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true; }
trap down EXIT
down
mkdir -p "$out"
rm -f "$out/$setting"-*.json
"${compose[@]}" --profile bench build

cpu=()
for service in postprocess preprocess model; do cpu+=(--cpu-from "$service=http://$service:9464/metrics"); done
for pair in $(seq 1 "$pairs"); do
  if [ $((pair % 2)) = 1 ]; then order=("$a" "$b"); else order=("$b" "$a"); fi
  for value in "${order[@]}"; do
    echo "=== pair $pair: $setting=$value"
    export "$setting=$value"
    "${compose[@]}" up --detach --wait --wait-timeout 300 --force-recreate model preprocess postprocess
    "${compose[@]}" up --detach --wait --wait-timeout 300 otel-collector jaeger prometheus
    "${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" bench ml-pipeline-bench run http://postprocess:5000/finalize \
      --label "$setting=$value" --image test.jpg -c "$concurrency" -d "$seconds" --warmup 50 --no-progress \
      "${cpu[@]}" --out "/out/$setting-$pair-$value.json"
  done
done
"${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" bench ml-pipeline-bench ab-report "$setting" "$a" "$b" /out --out "/out/$setting.md"
echo "bench/ab.sh: wrote $out/$setting.md"
