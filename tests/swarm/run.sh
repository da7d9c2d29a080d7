#!/usr/bin/env bash
# The stack on Docker Swarm, tested on this machine (tests/run.sh runs it after the compose tests):
#   bash tests/swarm/run.sh
# Makes this engine a single-node swarm if it is not one, deploys deploy/swarm/docker-stack.yml with
# the images tests/run.sh built (project $ML_PIPELINE_TEST_PROJECT), every published port on a free
# one, waits for it, runs tests/swarm/ in the test image on the host's network (classify through the
# published entry port — the edge —, both model replicas, the trace in Jaeger, Prometheus's targets), removes the
# stack with its volumes and secret, leaves the swarm if it made one (and the docker_gwbridge network
# it brought), and fails if anything is left or the swarm is not as it was.
set -euo pipefail
cd "$(dirname "$0")/../.."
stack=${ML_PIPELINE_SWARM_STACK:-ml-pipeline-swarm-test}
project=${ML_PIPELINE_TEST_PROJECT:-ml-pipeline-test}
secret="$stack-grafana-admin"
say() { printf 'tests/swarm/run.sh: %s\n' "$*" >&2; }

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}'; }
state_before=$(swarm_state)
# `swarm init` creates the docker_gwbridge network and `swarm leave` keeps it: remove it if we made it.
gwbridge_before=$(docker network ls -q --filter name=^docker_gwbridge$)
case $state_before in
  "inactive false") docker swarm init --advertise-addr 127.0.0.1 >/dev/null; say "initialised a single-node swarm" ;;
  "active true")
    # The images are this engine's own, and the ports are read from its containers.
    if [ "$(docker node ls -q | wc -l)" -ne 1 ]; then say "this engine's swarm has other nodes: test on a single-node one"; exit 1; fi
    say "deploying into this engine's single-node swarm; it stays" ;;
  *) say "this engine's swarm is '$state_before': it must be inactive or a single-node manager"; exit 1 ;;
esac

stack_leftovers() {
  local label="label=com.docker.stack.namespace=$stack"
  docker service ls -q --filter "$label"; docker ps -aq --filter "$label"
  docker network ls -q --filter "$label"; docker config ls -q --filter "$label"
  docker volume ls -q --filter "$label"; docker secret ls -q --filter "name=$secret"
}

cleanup() {
  local status=$?
  set +e  # clean up everything, whatever fails on the way
  if [ "$status" -ne 0 ]; then
    docker stack ps --no-trunc "$stack" 2>/dev/null | head -30
    for svc in $(docker service ls -q --filter "label=com.docker.stack.namespace=$stack" 2>/dev/null); do
      docker service logs --tail 30 "$svc" 2>&1 | tail -30
    done
  fi
  docker stack rm "$stack" >/dev/null 2>&1
  # Tasks stop asynchronously; the volumes can go once their containers have.
  for _ in $(seq 1 60); do
    [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$stack")" ] && break
    sleep 1
  done
  for _ in $(seq 1 30); do
    volumes=$(docker volume ls -q --filter "label=com.docker.stack.namespace=$stack")
    [ -z "$volumes" ] && break
    docker volume rm $volumes >/dev/null 2>&1 || sleep 1
  done
  docker secret rm "$secret" >/dev/null 2>&1
  for _ in $(seq 1 30); do  # the overlay network goes last, after its tasks
    [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$stack")" ] && break
    sleep 1
  done
  # Checked while still in the swarm (leaving it would delete services, configs and secrets anyway).
  local left
  left=$(stack_leftovers 2>&1)
  if [ -n "$left" ]; then say "the stack left resources behind: $left"; status=1; fi
  if [ "$state_before" = "inactive false" ]; then
    docker swarm leave --force >/dev/null || status=1
    if [ -z "$gwbridge_before" ]; then docker network rm docker_gwbridge >/dev/null 2>&1; fi
  fi
  if [ "$(swarm_state)" != "$state_before" ]; then
    say "the swarm is '$(swarm_state)', was '$state_before'"; status=1
  fi
  if [ "$(docker network ls -q --filter name=^docker_gwbridge$)" != "$gwbridge_before" ]; then
    say "docker_gwbridge is not as it was"; status=1
  fi
  say "exit status $status"
  exit "$status"
}
trap cleanup EXIT

# Grafana's admin password, as an operator would create it (Grafana itself stays at 0 replicas:
# its image is not on every test machine; the dashboards are tested against Prometheus instead).
head -c 18 /dev/urandom | base64 | docker secret create "$secret" - >/dev/null
MODEL_IMAGE=$project-model PREPROCESS_IMAGE=$project-preprocess POSTPROCESS_IMAGE=$project-postprocess \
GRAFANA_REPLICAS=0 GRAFANA_ADMIN_SECRET=$secret \
ENTRY_PORT=0 JAEGER_PORT=0 PROMETHEUS_PORT=0 GRAFANA_PORT=0 \
  docker stack deploy --resolve-image never --compose-file deploy/swarm/docker-stack.yml "$stack"

# Port 0: each published port is a free one; read them from the tasks' containers.
published() {  # service, container port → host port, once its task's container runs
  local id
  id=$(docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1" | head -1)
  [ -n "$id" ] && docker port "$id" "$2/tcp" 2>/dev/null | head -1 | sed 's/.*://'
}
for _ in $(seq 1 120); do
  entry=$(published edge 8080 || true); jaeger=$(published jaeger 16686 || true)
  prometheus=$(published prometheus 9090 || true)
  [ -n "$entry" ] && [ -n "$jaeger" ] && [ -n "$prometheus" ] && break
  sleep 2
done
[ -n "$entry" ] && [ -n "$jaeger" ] && [ -n "$prometheus" ] || { say "the published ports never appeared"; exit 1; }
say "deployed: entry :$entry, Jaeger :$jaeger, Prometheus :$prometheus"

docker run --rm --network host \
  -e SWARM_ENTRY_URL="http://127.0.0.1:$entry" \
  -e SWARM_JAEGER_URL="http://127.0.0.1:$jaeger" \
  -e SWARM_PROMETHEUS_URL="http://127.0.0.1:$prometheus" \
  -e SWARM_MODEL_REPLICAS=2 \
  "$project-tests" python -m pytest -p no:cacheprovider tests/swarm
