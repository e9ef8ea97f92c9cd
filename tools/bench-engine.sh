#!/usr/bin/env bash
# Benchmark: Kaa's engine vs onnxruntime (intra_op_num_threads=1) on the sample models and a
# PyTorch-style MLP 784-256-128-10, batch 1, 64 and 256, medians of thousands of calls after
# warm-up, Kaa at each kernel level the CPU has (KAA_ENGINE_LEVEL).
# Builds Benchmarks/ in release, uses the .venv that tools/export-samples.sh creates.
# Usage: tools/bench-engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then tools/export-samples.sh; fi
(cd Benchmarks && swift build -c release --product kaa-bench)
.venv/bin/python tools/bench-engine.py "$PWD/Benchmarks/.build/release/kaa-bench"
echo "reproduce: tools/bench-engine.sh"
