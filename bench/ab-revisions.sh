#!/usr/bin/env bash
# Interleaved A/B of two revisions of the code, for cuts no setting can switch: the three services
# as local processes (`ml-pipeline serve`, no Docker), each revision from its own git worktree, the
# same closed-loop load on /finalize, each service's CPU per request from its own counter.
#   bash bench/ab-revisions.sh 0aacc64 HEAD      # → reports/ab/REVISION.md (+ one JSON per run)
# As bench/ab.sh: A and B alternate, the order flips every pair, every run on fresh processes.
# AB_PAIRS (4), AB_REQUESTS (800 per run, after 100 warm-up), AB_CONCURRENCY (2), MODEL_BACKEND
# (`random`: the model's own work out of the way; `onnx` needs the model file, MODEL_PATH).
# Spans go to a local OTLP sink (every request traced and exported, as in the stack). Needs the
# project installed (`pip install -e .` and bench/requirements.txt) with what both revisions import
# (an older revision may need a package the current locks dropped); nothing else may run meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash bench/ab-revisions.sh REVISION_A REVISION_B"
a=$(git rev-parse --short "${1:?$usage}")
b=$(git rev-parse --short "${2:?$usage}")
pairs=${AB_PAIRS:-4}
requests=${AB_REQUESTS:-800}
concurrency=${AB_CONCURRENCY:-2}
out=$PWD/reports/ab
work=$(mktemp -d)
sink_pid=
cleanup() {
  [ -z "$sink_pid" ] || kill "$sink_pid" 2>/dev/null || true
  for rev in "$a" "$b"; do git worktree remove --force "$work/$rev" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for rev in "$a" "$b"; do git worktree add --detach --quiet "$work/$rev" "$rev"; done
mkdir -p "$out"
rm -f "$out"/REVISION-*.json

python - <<'PY' &
# A minimal OTLP/HTTP receiver: 200 to every export, so the services export as they do in the stack.
import asyncio

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 4318)
    await server.serve_forever()

asyncio.run(main())
PY
sink_pid=$!

ports=(--cpu-from postprocess=http://127.0.0.1:9466/metrics --cpu-from preprocess=http://127.0.0.1:9464/metrics
  --cpu-from model=http://127.0.0.1:9465/metrics)
for pair in $(seq 1 "$pairs"); do
  if [ $((pair % 2)) = 1 ]; then order=("$a" "$b"); else order=("$b" "$a"); fi
  for rev in "${order[@]}"; do
    echo "=== pair $pair: $rev"
    # The revision's own packages first (the installed project is this checkout's).
    PYTHONPATH="$work/$rev/services:$work/$rev/bench" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
      MODEL_BACKEND=${MODEL_BACKEND:-random} python -m ml_pipeline serve >"$work/serve-$rev-$pair.log" 2>&1 &
    serve_pid=$!
    ready=
    for _ in $(seq 120); do curl -sf http://127.0.0.1:5003/ready >/dev/null && ready=1 && break; sleep 1; done
    if [ -z "$ready" ]; then
      kill -INT "$serve_pid" 2>/dev/null || true
      echo "bench/ab-revisions.sh: $rev did not get ready in 120 s; its log:" >&2
      tail -20 "$work/serve-$rev-$pair.log" >&2
      exit 1
    fi
    python -m ml_pipeline_bench run http://127.0.0.1:5003/finalize --label "REVISION=$rev" --image test.jpg \
      -c "$concurrency" -n "$requests" --warmup 100 --no-progress "${ports[@]}" --out "$out/REVISION-$pair-$rev.json"
    kill -INT "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" || true
  done
done
python -m ml_pipeline_bench ab-report REVISION "$a" "$b" "$out" --out "$out/REVISION.md"
echo "bench/ab-revisions.sh: wrote $out/REVISION.md"
