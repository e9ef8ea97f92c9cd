#!/usr/bin/env bash
# Kaa's test command (the README's and CI's): installs what is missing, builds, runs every test.
# Usage: tools/test.sh [extra `swift test` arguments, e.g. --filter HTTPServerTests]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/python-env.sh test >/dev/null   # .venv-test: tritonclient for TritonClientTests, selenium for DashboardLiveTests
swift build --build-tests
swift test --skip-build "$@"
if [ $# -eq 0 ]; then
  # The engine's numeric tests again at each kernel level below the CPU's own (the run above
  # used the highest): whole models through the baseline and AVX2 kernels too.
  cpu_level=$(.build/debug/kaa ops | sed -n 's/^kernels: \([a-z0-9]*\).*/\1/p')
  for level in baseline avx2 avx512; do
    [ "$level" = "$cpu_level" ] && break
    echo "engine tests at KAA_ENGINE_LEVEL=$level"
    KAA_ENGINE_LEVEL=$level swift test --skip-build --filter 'GemmTests|QGemmTests|QuantizedModelTests|ElementwiseTests|BackendNodeTests|SampleModelTests|MLOperatorTests|PipelineTests'
  done
  # Leak checks read process-wide counters (RSS, descriptors): they run in a process of their own.
  KAA_LEAK_TESTS=1 swift test --skip-build --filter ResourceLeakTests
  # The proof harness's short schedule (docs/proof.md) against the debug build made above.
  tools/proof.sh --short --kaa .build/debug/kaa
  # The packages (README, "Packages"): one static release build, the .deb installed, run and
  # purged, the tarball run without the Swift toolchain.
  tools/test-package.sh
fi
