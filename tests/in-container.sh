#!/usr/bin/env bash
# The tests container's command (tests/run.sh). With no arguments: the deployed stack's integration
# tests, one at a time (they share one stack, and some stop its containers; the soak goes first),
# then every test that needs no stack, in parallel on each core (pytest-xdist): that halves the
# ~3 minutes they take in one process. With arguments, just `pytest ARGS…`.
set -uo pipefail
pytest=(python -m pytest -p no:cacheprovider --durations=25)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" "$@"
fi
status=0
"${pytest[@]}" tests/integration || status=$?
"${pytest[@]}" -n auto --dist worksteal tests --ignore=tests/integration || status=$?
exit "$status"
