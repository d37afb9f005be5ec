#!/usr/bin/env bash
# Regenerates the Python protobuf and gRPC code in rnnserve/v1/ and rnnserve/inference/ from protos/. Never edit the output.
# Usage: scripts/gen_protos.sh [OUTPUT_DIR]   (PYTHON selects the interpreter with grpcio-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
"${PYTHON:-python3}" -m grpc_tools.protoc -Iprotos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" protos/rnnserve/v1/*.proto protos/rnnserve/inference/*.proto
