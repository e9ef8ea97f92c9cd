#!/usr/bin/env bash
# Benchmark: Kaa's engine vs onnxruntime (intra_op_num_threads=1) on the sample models and a
# PyTorch-style MLP 784-256-128-10, batch 1, 64 and 256, medians of thousands of calls after
# warm-up, Kaa at each kernel level the CPU has (KAA_ENGINE_LEVEL); then the MLPs quantized to
# int8 by Kaa against their float models and against onnxruntime's quantize_dynamic models,
# and the models' sizes. KAA_BENCH_ONLY=int8 runs the int8 part alone.
# Builds Benchmarks/ in release, uses the .venv that tools/export-samples.sh creates.
# Usage: [KAA_BENCH_ONLY=int8] tools/bench-engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then tools/export-samples.sh; fi
(cd Benchmarks && swift build -c release --product kaa-bench)
.venv/bin/python tools/bench-engine.py "$PWD/Benchmarks/.build/release/kaa-bench"
echo "reproduce: tools/bench-engine.sh"
