#!/usr/bin/env bash
# Every test — unit, in-process and the compose integration test — inside Docker:
#   bash tests/run.sh [extra pytest args…]
# Validates the collector, Jaeger and Prometheus configs with their own binaries, builds the
# stack and the test runner, starts the stack as project "ml-pipeline-test" (no host
# ports), waits until it is healthy, runs pytest in the `tests` container, then removes
# everything it created (containers, network, volume) and checks that nothing is left.
set -euo pipefail
cd "$(dirname "$0")/.."
project=ml-pipeline-test
compose=(docker compose -p "$project" -f docker-compose.yml -f tests/docker-compose.test.yml)

cleanup() {
  "${compose[@]}" down -v --remove-orphans --timeout 30 >/dev/null 2>&1
}
trap cleanup EXIT

if [ $# -gt 0 ]; then
  export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} $*"
fi
status=0
if bash tests/validate-configs.sh; then
  "${compose[@]}" up --build --abort-on-container-exit --exit-code-from tests || status=$?
else
  status=1
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
echo "tests/run.sh: exit status $status"
exit "$status"
