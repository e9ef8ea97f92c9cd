#!/usr/bin/env bash
# Regenerates Sources/KaaEngine/Generated/onnx-ml.pb.swift from proto/onnx-ml.proto.
# Run by hand only when the schema changes; CI never runs it (the generated file is committed).
#
# proto/onnx-ml.proto and proto/onnx.proto are copied from the `onnx` PyPI package (1.23.2);
# they differ only in a comment, so only onnx-ml.proto (the superset) is compiled: compiling
# both would define every message twice.
#
# Needs: protoc (Debian `protobuf-compiler`) and the swift-protobuf 1.39.0 plugin, built once
# outside the project:
#   git clone https://github.com/apple/swift-protobuf /tmp/swift-protobuf
#   cd /tmp/swift-protobuf && git checkout 1.39.0 && swift build -c release --product protoc-gen-swift
# Usage: tools/gen-onnx-proto.sh [path/to/protoc-gen-swift]
set -euo pipefail
cd "$(dirname "$0")/.."
plugin="${1:-/tmp/swift-protobuf/.build/release/protoc-gen-swift}"
protoc --plugin=protoc-gen-swift="$plugin" \
  --swift_opt=Visibility=Internal \
  --swift_out=Sources/KaaEngine/Generated \
  -I proto proto/onnx-ml.proto
