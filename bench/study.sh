#!/usr/bin/env bash
# The whole performance study, every scenario side by side on this machine, then the report:
#   bash bench/study.sh                 # writes reports/study/*.json, then docs/performance.md + docs/perf/*.png
#   BENCH_REQUESTS=60 bash bench/study.sh   # a quicker, noisier run
#   BENCH_SCENARIOS="inprocess chain-http" bash bench/study.sh   # only these; report in reports/study/
#   BENCH_SCENARIOS="overload overload-no-admission" BENCH_OVERLOAD=1,2,3 bash bench/study.sh   # open-loop overload
# Each scenario gets a fresh stack (compose project "ml-pipeline-bench", no host ports); the load
# generator runs in a container on the same network. Nothing is left running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

project=ml-pipeline-bench
project_off=ml-pipeline-bench-off  # the telemetry-off twin of the interleaved comparison
export BENCH_OUT=${BENCH_OUT:-$PWD/reports/study}
export COMPOSE_PROFILES=  # no Grafana: it would only compete for the CPU being measured
concurrency=${BENCH_CONCURRENCY:-1,2,4,8}
requests=${BENCH_REQUESTS:-200}
warmup=${BENCH_WARMUP:-20}
wrk_seconds=${BENCH_WRK_SECONDS:-6}
repeats=${BENCH_REPEATS:-4}
floor_concurrency=${BENCH_FLOOR_CONCURRENCY:-2,4}  # the own-cost target's c ≥ 2
files=(-f docker-compose.yml -f bench/docker-compose.bench.yml)
compose=(docker compose -p "$project" "${files[@]}")
only=${BENCH_SCENARIOS:-}
scenario_env=(TRANSPORT MODEL_PROTOCOL DYNAMIC_BATCHING ORT_INTRA_OP_THREADS TRACING_ENABLED OTEL_EXPORTER_OTLP_ENDPOINT RESULT_CACHE_SIZE SHARED_DATA_VOLUME MAX_IN_FLIGHT MAX_QUEUE)
overload_multiples=${BENCH_OVERLOAD:-1,1.5,2,2.5,3}
overload_seconds=${BENCH_OVERLOAD_SECONDS:-30}
pipeline=(model preprocess postprocess otel-collector jaeger prometheus)
chain=http://postprocess:5000/finalize

down() {
  for p in "$project" "$project_off"; do
    docker compose -p "$p" "${files[@]}" --profile monolith --profile bench down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
    # `down -v` skips volumes no service of the current configuration mounts (the RAM one).
    docker volume ls -q --filter "label=com.docker.compose.project=$p" | xargs -r docker volume rm >/dev/null 2>&1 || true
  done
}
trap down EXIT

wanted() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

# cpu_sources URL: --cpu-from for every server process the target's requests pass through (their
# CPU ms per request, service by service), the collector and Jaeger included.
cpu_sources() {
  local services=()
  case $1 in
    http://postprocess:* | http://edge:*) services=(model preprocess postprocess) ;;
    http://monolith:*) services=(monolith) ;;
    http://model:*) services=(model) ;;
    *) return 0 ;;
  esac
  for s in "${services[@]}"; do printf -- '--cpu-from %s=http://%s:9464/metrics\n' "$s" "$s"; done  # METRICS_PORT
  printf -- '--cpu-from otel-collector=http://otel-collector:8888/metrics\n--cpu-from jaeger=http://jaeger:8888/metrics\n'
}

# load PROJECT NAME URL [ml-pipeline-bench run options …]: the load generator on PROJECT's network
load() {
  local p=$1 name=$2 url=$3; shift 3
  # shellcheck disable=SC2046  # one word per line
  docker compose -p "$p" "${files[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" bench \
    ml-pipeline-bench run "$url" --label "$name" --image test.jpg --out "/out/$name.json" --no-progress \
    $(cpu_sources "$url") "$@"
}

# up PROJECT [ENV=VALUE …] [--scale model=N] [-- services to start]: a fresh stack
up() {
  local p=$1; shift
  local envs=() up_args=() services=()
  while [ $# -gt 0 ]; do
    case $1 in
      --scale) up_args+=(--scale "$2"); shift 2 ;;
      --) shift; services=("$@"); break ;;
      *) envs+=("$1"); shift ;;
    esac
  done
  (
    for v in "${scenario_env[@]}"; do unset "$v"; done
    [ ${#envs[@]} -gt 0 ] && export "${envs[@]}"
    docker compose -p "$p" "${files[@]}" --profile monolith up --detach --wait --wait-timeout 300 "${up_args[@]}" "${services[@]}"
  )
}

# bench NAME URL [--wrk] [--npy] [-c LIST] [up arguments …]: one scenario on a fresh stack; --wrk also
# drives it with wrk, --npy sends the preprocessed tensor (the model alone), -c its own concurrencies
bench() {
  local name=$1 url=$2; shift 2
  wanted "$name" || return 0
  local with_wrk= body=() levels=$concurrency
  while true; do
    case ${1:-} in
      --wrk) with_wrk=1; shift ;;
      --npy) body=(--body npy); shift ;;
      -c) levels=$2; shift 2 ;;
      *) break ;;
    esac
  done
  echo "=== $name"
  down
  case $url in inprocess | straightforward | bare-chain) ;; *) up "$project" "$@" ;; esac
  load "$project" "$name" "$url" -c "$levels" -n "$requests" --warmup "$warmup" "${body[@]}"
  if [ -n "$with_wrk" ]; then
    load "$project" "$name-wrk" "$url" --tool wrk -c "$concurrency" -d "$wrk_seconds"
  fi
}

# chain_local: the three services as `ml-pipeline serve` starts them (one process each, 127.0.0.1),
# inside the bench container, exporting to the stack's collector; the load generator beside them.
chain_local() {
  wanted chain-local || return 0
  echo "=== chain-local"
  down
  up "$project" -- otel-collector jaeger prometheus
  local cpu=() s port
  for s in preprocess:9464 model:9465 postprocess:9466; do  # serve's metrics ports (--metrics-base-port)
    port=${s#*:}; cpu+=(--cpu-from "${s%:*}=http://127.0.0.1:$port/metrics")
  done
  docker compose -p "$project" "${files[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" \
    -e OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318 bench sh -c '
      ml-pipeline serve --base-port 6001 >/tmp/serve.log 2>&1 & serve=$!
      waited=0
      until python -m ml_pipeline.healthcheck http://127.0.0.1:6003/ready >/dev/null 2>&1; do
        kill -0 $serve 2>/dev/null && [ $waited -lt 300 ] || { cat /tmp/serve.log; kill $serve; exit 1; }
        sleep 1; waited=$((waited + 1))
      done
      ml-pipeline-bench run http://127.0.0.1:6003/finalize --label chain-local --image test.jpg \
        --out /out/chain-local.json --no-progress "$@"; status=$?
      kill -INT $serve; wait $serve; exit $status' chain-local \
    -c "$concurrency" -n "$requests" --warmup "$warmup" "${cpu[@]}" \
    --cpu-from otel-collector=http://otel-collector:8888/metrics --cpu-from jaeger=http://jaeger:8888/metrics
}

# overload NAME [up arguments …]: open loop at multiples of the capacity measured first
overload() {
  local name=$1; shift
  wanted "$name" || return 0
  echo "=== $name"
  down
  up "$project" "$@"
  load "$project" "$name" "$chain" --overload "$overload_multiples" -d "$overload_seconds"
}

mkdir -p "$BENCH_OUT"
"${compose[@]}" --profile bench --profile monolith build
# The telemetry-off twin is its own compose project, so its own image names: built too, or it
# would run whatever images an earlier run left under them.
docker compose -p "$project_off" "${files[@]}" --profile bench build
# every scenario, then telemetry on/off; each writes $BENCH_OUT/<name>.json
run_scenarios() {
  [ -z "$only" ] && rm -f "$BENCH_OUT"/*.json

  # The yardstick (a plain Pillow + ONNX Runtime pipeline, one process per core) and the chain's own
  # in-process twin (the same code as the services, no HTTP).
  bench straightforward straightforward
  bench inprocess inprocess
  # The floor of the chain's stack: the yardstick's work in three bare uvicorn + httpx processes.
  bench bare-chain bare-chain
  bench monolith http://monolith:5000/classify --wrk -- monolith otel-collector jaeger prometheus
  bench chain-http "$chain" --wrk TRANSPORT=http -- "${pipeline[@]}"
  # The chain as users call it: through the edge proxy (nginx; its own CPU is not metered here).
  bench chain-edge http://edge:8080/finalize TRANSPORT=http -- "${pipeline[@]}" edge
  bench chain-json "$chain" TRANSPORT=json -- "${pipeline[@]}"
  bench chain-volume "$chain" TRANSPORT=volume -- "${pipeline[@]}"
  bench chain-volume-ram "$chain" TRANSPORT=volume SHARED_DATA_VOLUME=shared-data-ram -- "${pipeline[@]}"
  # preprocess → model over the Open Inference Protocol instead of /predict.
  bench chain-v2-http "$chain" MODEL_PROTOCOL=v2-http -- "${pipeline[@]}"
  bench chain-v2-grpc "$chain" MODEL_PROTOCOL=v2-grpc -- "${pipeline[@]}"
  # The chain as `ml-pipeline serve` runs it: three processes, no Docker networking.
  chain_local
  # The model's dynamic batcher (off by default): the model alone (one replica, tensors straight
  # to /predict) and the whole chain, off and on.
  bench model-alone http://model:5000/predict --npy -c 1,4,8,16 --scale model=1 -- model otel-collector jaeger prometheus
  bench model-alone-batching http://model:5000/predict --npy -c 1,4,8,16 DYNAMIC_BATCHING=true --scale model=1 -- model otel-collector jaeger prometheus
  bench chain-http-c16 "$chain" -c 1,4,8,16 -- "${pipeline[@]}"
  bench chain-http-batching "$chain" -c 1,4,8,16 DYNAMIC_BATCHING=true -- "${pipeline[@]}"
  # ONNX Runtime threads per model replica: 1 as shipped (two replicas, two cores); 2 runs a lone
  # request faster and spends more CPU under load.
  bench chain-http-ort2 "$chain" ORT_INTRA_OP_THREADS=2 -- "${pipeline[@]}"
  bench chain-http-1-replica "$chain" TRANSPORT=http --scale model=1 -- "${pipeline[@]}"
  bench chain-http-cache "$chain" TRANSPORT=http RESULT_CACHE_SIZE=1000 -- "${pipeline[@]}"

  # Overload: admission control as shipped, and effectively off (the congestion collapse it prevents).
  overload overload TRANSPORT=http -- "${pipeline[@]}"
  overload overload-no-admission TRANSPORT=http MAX_IN_FLIGHT=100000 MAX_QUEUE=0 -- "${pipeline[@]}"

  # Telemetry on vs off: a few percent, below the drift between separate stack starts. So both
  # stacks run at once (the idle one costs next to nothing) and the runs alternate, on/off × repeats.
  if wanted telemetry; then
    echo "=== telemetry on vs off, interleaved × $repeats"
    down
    up "$project" TRANSPORT=http -- "${pipeline[@]}"
    up "$project_off" TRANSPORT=http TRACING_ENABLED=false OTEL_EXPORTER_OTLP_ENDPOINT= -- model preprocess postprocess
    for i in $(seq "$repeats"); do
      load "$project" "telemetry-on-$i" "$chain" -c 1,4 -n "$requests" --warmup "$warmup"
      load "$project_off" "telemetry-off-$i" "$chain" -c 1,4 -n "$requests" --warmup "$warmup"
    done
  fi
  # The services' own cost over the bare chain: runs of one configuration minutes apart differed by
  # 3-7 ms of CPU per request, more than the 2 ms target. So the chain's stack stays up (idle while
  # the bare chain runs in the load generator's container) and the two alternate, the order
  # flipping every repeat: chain, bare, bare, chain, …
  if wanted floor; then
    echo "=== chain vs bare chain, interleaved × $repeats"
    down
    up "$project" TRANSPORT=http -- "${pipeline[@]}"
    # A fresh stack's first run is its slowest (the first pair measured +9.8 ms, the next +4.5):
    # one unrecorded run first, so the pairs compare the steady states (the bare chain warms up
    # in each of its runs, as every scenario does).
    load "$project" floor-warm-up "$chain" -c 4 -n "$requests" --warmup 0 --out /tmp/floor-warm-up.json >/dev/null
    for i in $(seq "$repeats"); do
      if [ $((i % 2)) = 1 ]; then order=(chain bare); else order=(bare chain); fi
      for kind in "${order[@]}"; do
        if [ "$kind" = bare ]; then url=bare-chain; else url=$chain; fi
        load "$project" "floor-$kind-$i" "$url" -c "$floor_concurrency" -n "$requests" --warmup "$warmup"
      done
    done
  fi
  down
}
# BENCH_REPORT_ONLY=1: no runs, the report redrawn from the results there (after editing conclusions.md)
[ -n "${BENCH_REPORT_ONLY:-}" ] || run_scenarios

# A partial run (BENCH_SCENARIOS) reports beside its results; only the whole study replaces docs/.
report_dir=docs
[ -n "$only" ] && report_dir=$BENCH_OUT
mkdir -p "$report_dir"
"${compose[@]}" run --rm --no-TTY --user "$(id -u):$(id -g)" -v "$(cd "$report_dir" && pwd):/report" -v "$PWD/bench:/notes:ro" \
  -e DOCKER_VERSION="$(docker version --format '{{.Server.Version}}' 2>/dev/null)" bench \
  ml-pipeline-bench report /out --out /report/performance.md $([ -f bench/conclusions.md ] && echo --notes /notes/conclusions.md)
echo "bench/study.sh: results in $BENCH_OUT, report in $report_dir/performance.md"
