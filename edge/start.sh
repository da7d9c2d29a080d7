#!/usr/bin/env bash
# The edge under Docker (compose, Swarm): nginx, and a watch on postprocess's addresses.
# nginx keeps connections to postprocess alive (edge/upstream-docker.conf), which needs an
# `upstream` block, and open-source nginx resolves its host names only when it loads its config.
# So this asks Docker's DNS every EDGE_RESOLVE_INTERVAL_S (5 s) and reloads nginx gracefully when
# the answer changes: a postprocess recreated, rescheduled or scaled is found within seconds, as
# before, without a new TCP connection per request (docs/edge.md, "Finding postprocess").
set -u
host=${EDGE_UPSTREAM_HOST:-postprocess}
interval=${EDGE_RESOLVE_INTERVAL_S:-5}

addresses() {  # sorted and unique: Docker's DNS answers in a different order each time
  getent ahostsv4 "$host" | awk '{print $1}' | sort -u | tr '\n' ' '
}

say() {  # a JSON line on stderr, as nginx's own access lines are JSON
  printf '{"ts":"%s","level":"INFO","service":"edge","logger":"edge.upstream","message":"%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%S%:z)" "$1" >&2
}

watch_addresses() {
  local known now
  known=$(addresses)
  while sleep "$interval"; do
    now=$(addresses)
    # No answer (postprocess gone for now): keep what nginx has; a reload would fail on the name.
    if [ -n "$now" ] && [ "$now" != "$known" ]; then
      say "$host is at ${now% } (was ${known% }): reloading nginx"
      nginx -s reload && known=$now
    fi
  done
}

watch_addresses &
exec nginx -g 'daemon off;'
