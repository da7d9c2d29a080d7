#!/usr/bin/env bash
# Every test — unit, in-process and the compose integration test — inside Docker:
#   bash tests/run.sh [extra pytest args…]
# Validates the collector, Jaeger and Prometheus configs with their own binaries, builds the
# stack and the test runner, starts the stack as its own compose project (no host ports;
# "ml-pipeline-test", or $ML_PIPELINE_TEST_PROJECT so two checkouts can test at once), waits
# until it is healthy, runs pytest in a one-off `tests` container, then removes
# everything it created (containers, network, volume) and checks that nothing is left. Then, with
# no pytest arguments, the same images on Docker Swarm (tests/swarm/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export ML_PIPELINE_TEST_PROJECT=${ML_PIPELINE_TEST_PROJECT:-ml-pipeline-test}
# No Grafana (.env enables its profile): its dashboards are tested by running every panel query
# against the real Prometheus, so the run needs no Grafana image (none exists on CI's machine).
export COMPOSE_PROFILES=
project=$ML_PIPELINE_TEST_PROJECT
compose=(docker compose -p "$project" -f docker-compose.yml -f tests/docker-compose.test.yml)
# SCALE_OUT=1: the collector as a router in front of two samplers (docker-compose.scale-out.yml),
# the router our collector build (tests/docker-compose.scale-out.yml).
if [ "${SCALE_OUT:-0}" = 1 ]; then
  compose+=(-f docker-compose.scale-out.yml -f tests/docker-compose.scale-out.yml)
  export OTELCOL_ROUTER_IMAGE=ml-pipeline-otelcol:0.140.1  # tests/validate-configs.sh checks router.yml with it
fi

cleanup() {
  "${compose[@]}" down -v --remove-orphans --timeout 30 >/dev/null 2>&1
}
trap cleanup EXIT

# Not `up --abort-on-container-exit`: the failover and backpressure tests stop and kill stack
# containers on purpose, which would abort the run. The stack comes up detached and healthy,
# then pytest runs in a one-off `tests` container whose exit status is the run's.
status=0
if "${compose[@]}" --profile tests build \
   && bash tests/validate-configs.sh \
   && "${compose[@]}" up --detach --wait --wait-timeout 300; then
  # tests/in-container.sh: the integration tests, then the rest in parallel; or `pytest ARGS…`.
  "${compose[@]}" run --rm --no-TTY tests bash tests/in-container.sh "$@" || status=$?
else
  status=1
fi
if [ "$status" -ne 0 ]; then
  "${compose[@]}" ps --all || true
  "${compose[@]}" logs --no-color --tail 80 || true
fi
cleanup
trap - EXIT

leftovers=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; \
            docker network ls -q --filter "label=com.docker.compose.project=$project"; \
            docker volume ls -q --filter "label=com.docker.compose.project=$project")
if [ -n "$leftovers" ]; then
  echo "tests/run.sh: 'docker compose down -v' left resources behind: $leftovers" >&2
  status=1
fi
# The same images on Docker Swarm (tests/swarm/run.sh): with the whole suite, after the compose
# stack is gone (one stack at a time on this machine). RUN_SWARM_TEST=1 or 0 decides otherwise.
run_swarm=${RUN_SWARM_TEST:-$([ "$#" -eq 0 ] && echo 1 || echo 0)}
if [ "$run_swarm" = 1 ]; then
  bash tests/swarm/run.sh || status=1
fi
echo "tests/run.sh: exit status $status"
exit "$status"
