#!/usr/bin/env bash
# Compile the Open Inference Protocol's gRPC definitions into the descriptor set the services load:
#   bash scripts/protos.sh        (needs grpcio-tools: pip install -e '.[test]')
# tests/project/test_protos.py fails while the committed descriptor set is not what this writes.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I services/ml_pipeline/core/protos \
  --descriptor_set_out=services/ml_pipeline/core/protos/open_inference.binpb open_inference.proto
echo "scripts/protos.sh: services/ml_pipeline/core/protos/open_inference.binpb written"
