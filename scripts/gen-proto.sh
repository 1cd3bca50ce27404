#!/usr/bin/env bash
# Generates the Python gRPC code for proto/ into sidecar/_proto (committed, so that a plain
# `pip install` works) and rewrites the generated imports to live under that package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
out="$root/sidecar/_proto"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protos=$(cd "$root/proto" && find jit -name '*.proto' | sort)
# google/rpc/status.proto (GrantStream's per-message errors) ships with
# googleapis-common-protos, whose generated google.rpc.status_pb2 the imports then use.
rpc_protos=$("$py" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')
(cd "$root/proto" && "$py" -m grpc_tools.protoc -I. -I"$rpc_protos" --python_out="$tmp" --pyi_out="$tmp" \
  --grpc_python_out="$tmp" $protos)
find "$tmp" -name '*.py*' -exec sed -i -E 's/^from jit\.v1 import/from sidecar._proto.jit.v1 import/' {} +
for d in "$tmp/jit" "$tmp/jit/v1"; do touch "$d/__init__.py"; done
rm -rf "$out/jit"
mkdir -p "$out"
cp -r "$tmp/jit" "$out/"
touch "$out/__init__.py"
