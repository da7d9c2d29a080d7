#!/usr/bin/env bash
# The whole performance study, every scenario side by side on this machine, then the report:
#   bash bench/study.sh                 # writes reports/study/*.json, then docs/performance.md + docs/perf/*.png
#   BENCH_REQUESTS=60 bash bench/study.sh   # a quicker, noisier run
#   BENCH_SCENARIOS="inprocess chain-http" bash bench/study.sh   # only these scenarios
# Each scenario gets a fresh stack (compose project "ml-pipeline-bench", no host ports); the load
# generator runs in a container on the same network. Nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

project=ml-pipeline-bench
export BENCH_OUT=${BENCH_OUT:-$PWD/reports/study}
export COMPOSE_PROFILES=  # no Grafana: it would only compete for the CPU being measured
concurrency=${BENCH_CONCURRENCY:-1,2,4,8}
requests=${BENCH_REQUESTS:-200}
warmup=${BENCH_WARMUP:-20}
compose=(docker compose -p "$project" -f docker-compose.yml -f bench/docker-compose.bench.yml)
only=${BENCH_SCENARIOS:-}
scenario_env=(TRANSPORT TRACING_ENABLED OTEL_EXPORTER_OTLP_ENDPOINT RESULT_CACHE_SIZE SHARED_DATA_VOLUME)

down() {
  "${compose[@]}" --profile monolith --profile bench down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  # `down -v` skips volumes no service of the current configuration mounts (the RAM one).
  docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null 2>&1 || true
}
trap down EXIT

mkdir -p "$BENCH_OUT"
[ -z "$only" ] && rm -f "$BENCH_OUT"/*.json
"${compose[@]}" --profile bench --profile monolith build

# bench NAME URL [ENV=VALUE …] [--scale model=N] [-- services to start]
bench() {
  local name=$1 url=$2; shift 2
  if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then return 0; fi
  local envs=() up_args=() services=()
  while [ $# -gt 0 ]; do
    case $1 in
      --scale) up_args+=(--scale "$2"); shift 2 ;;
      --) shift; services=("$@"); break ;;
      *) envs+=("$1"); shift ;;
    esac
  done
  echo "=== $name"
  down
  (
    for v in "${scenario_env[@]}"; do unset "$v"; done
    [ ${#envs[@]} -gt 0 ] && export "${envs[@]}"
    if [ "$url" != inprocess ]; then
      "${compose[@]}" --profile monolith up --detach --wait --wait-timeout 300 "${up_args[@]}" "${services[@]}"
    fi
    "${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" bench \
      ml-pipeline bench "$url" --label "$name" -c "$concurrency" -n "$requests" --warmup "$warmup" \
      --image test.jpg --out "/out/$name.json" --no-progress
  )
}

chain=http://postprocess:5000/finalize
pipeline=(model preprocess postprocess otel-collector jaeger prometheus)
bench inprocess inprocess
bench monolith http://monolith:5000/classify -- monolith otel-collector jaeger prometheus
bench chain-http "$chain" TRANSPORT=http -- "${pipeline[@]}"
bench chain-json "$chain" TRANSPORT=json -- "${pipeline[@]}"
bench chain-volume "$chain" TRANSPORT=volume -- "${pipeline[@]}"
bench chain-volume-ram "$chain" TRANSPORT=volume SHARED_DATA_VOLUME=shared-data-ram -- "${pipeline[@]}"
bench chain-http-telemetry-off "$chain" TRANSPORT=http TRACING_ENABLED=false OTEL_EXPORTER_OTLP_ENDPOINT= \
  -- model preprocess postprocess
bench chain-http-1-replica "$chain" TRANSPORT=http --scale model=1 -- "${pipeline[@]}"
bench chain-http-cache "$chain" TRANSPORT=http RESULT_CACHE_SIZE=1000 -- "${pipeline[@]}"
down

mkdir -p docs
"${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" -v "$PWD/docs:/docs" \
  -e DOCKER_VERSION="$(docker version --format '{{.Server.Version}}' 2>/dev/null)" bench \
  ml-pipeline bench-report /out --out /docs/performance.md $([ -f bench/conclusions.md ] && echo --notes bench/conclusions.md)
echo "bench/study.sh: results in $BENCH_OUT, report in docs/performance.md"
