"""The pipeline core: errors, the tensor codec and hand-offs, deadlines, the wire names, the result
cache and the Open Inference Protocol's codecs. numpy (and protobuf for gRPC) only: no web
framework, no telemetry, no settings — tests/project/test_structure.py holds it to that."""
