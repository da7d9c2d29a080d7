#!/usr/bin/env bash
# Where each service's CPU goes under load: py-spy flame graphs of postprocess, preprocess and one
# model replica while the study's load generator drives the chain (HTTP hand-off, telemetry on,
# every request traced and exported).
#   bash bench/profile.sh before          # writes docs/perf/flame-before-<service>.svg + .txt
# py-spy runs in a sidecar container in each service container's PID namespace (so it sees which
# threads are idle) with CAP_SYS_PTRACE; the services' own containers keep dropping every
# capability. The sidecar image is the stack's Python base with py-spy 0.4.1, hash-pinned.
# PROFILE_SECONDS (40), PROFILE_CONCURRENCY (2), PROFILE_RATE (50 samples/s; --nonblocking: the
# services are never paused to be sampled).
set -euo pipefail
cd "$(dirname "$0")/.."

label=${1:?usage: bash bench/profile.sh LABEL}
seconds=${PROFILE_SECONDS:-40}
concurrency=${PROFILE_CONCURRENCY:-2}
rate=${PROFILE_RATE:-50}
out=docs/perf
project=ml-pipeline-profile
pyspy_image=ml-pipeline-py-spy
export COMPOSE_PROFILES=
compose=(docker compose -p "$project" -f docker-compose.yml -f bench/docker-compose.bench.yml)

docker build --quiet --tag "$pyspy_image" --build-arg "PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.12-slim}" - >/dev/null <<'DOCKERFILE'
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN printf '%s\n' 'py-spy==0.4.1 \' \
      '  --hash=sha256:6a80ec05eb8a6883863a367c6a4d4f2d57de68466f7956b6367d4edd5c61bb29 \' \
      '  --hash=sha256:ee776b9d512a011d1ad3907ed53ae32ce2f3d9ff3e1782236554e22103b5c084' >/tmp/py-spy.txt \
    && python3 -m venv /opt/py-spy && /opt/py-spy/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/py-spy.txt
ENV PATH=/opt/py-spy/bin:$PATH
DOCKERFILE

down() { "${compose[@]}" --profile bench down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true; }
trap down EXIT
down
"${compose[@]}" --profile bench build
"${compose[@]}" up --detach --wait --wait-timeout 300 model preprocess postprocess otel-collector jaeger prometheus

mkdir -p "$out"
requests=$(( (seconds + 60) * 80 ))  # more than the chain serves in the window: load outlasts sampling
"${compose[@]}" run --rm --no-TTY bench ml-pipeline-bench run http://postprocess:5000/finalize \
  --label profile --image test.jpg --out /tmp/profile.json --no-progress -c "$concurrency" -n "$requests" --warmup 50 \
  >/tmp/ml-pipeline-profile-load.log 2>&1 &
load=$!
sleep 10  # past the warm-up
# A service's CPU seconds and requests served so far (the first container's; its internal metrics
# port): the profile's shares become ms per request with the process's own CPU counter, not the
# sample count (a sampled thread waiting for a core counts as running).
counters() {
  docker exec "$("${compose[@]}" ps -q "$1" | head -1)" python -c '
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode()
cpu = requests = 0.0
for line in text.splitlines():
    if line.startswith("process_cpu_seconds_total "):
        cpu = float(line.split()[1])
    elif line.startswith("ml_pipeline_requests_total{") and "route=\"/" in line and "/health" not in line and "/ready" not in line:
        requests += float(line.rsplit(" ", 1)[1])
print(cpu, int(requests))'
}
# CPU per request without the sampler first (the figure the shares are scaled to: py-spy reading a
# process's memory slows it down), then the sampled window.
unsampled_seconds=20
declare -A before_counters cpu_ms_per_request
for service in postprocess preprocess model; do before_counters[$service]=$(counters "$service"); done
sleep "$unsampled_seconds"
for service in postprocess preprocess model; do
  read -r cpu0 n0 <<<"${before_counters[$service]}"
  read -r cpu1 n1 <<<"$(counters "$service")"
  cpu_ms_per_request[$service]=$(python3 -c "print(round(1000 * ($cpu1 - $cpu0) / max(1, $n1 - $n0), 3))")
  echo "$service: $((n1 - n0)) requests in ${unsampled_seconds} s, ${cpu_ms_per_request[$service]} ms of CPU per request (not sampled)"
done
pids=()
for service in postprocess preprocess model; do
  container=$("${compose[@]}" ps -q "$service" | head -1)
  # In the container's PID namespace the service is the child of its init (pid 1: compose's `init: true`).
  # shellcheck disable=SC2016  # expanded by the sidecar's shell
  docker run --rm --pid "container:$container" --cap-add SYS_PTRACE --user "$(id -u):$(id -g)" \
    -v "$PWD/$out:/out" "$pyspy_image" sh -c '
      pid=$(for s in /proc/[0-9]*/stat; do set -- $(cat "$s" 2>/dev/null) x x x x; [ "$4" = 1 ] && echo "$1"; done | head -1)
      exec py-spy record --nonblocking --nolineno --full-filenames --rate "$0" --duration "$1" --pid "$pid" \
        --format flamegraph --output "/out/$2"' "$rate" "$seconds" "flame-$label-$service.svg" >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
for service in postprocess preprocess model; do
  python3 bench/flame_summary.py "$out/flame-$label-$service.svg" --cpu-ms "${cpu_ms_per_request[$service]}" \
    >"$out/flame-$label-$service.txt"
  echo "== $service"
  head -40 "$out/flame-$label-$service.txt"
done
