#!/usr/bin/env bash
# Snapshot build and verify throughput for a generated ONNX model (default 100 MB), with the
# stock tools (`lz4` compression, `sha256sum`) on the same file side by side as a baseline.
# Usage: tools/bench-snapshot.sh [SIZE_MB]      (builds `kaa` in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb="${1:-100}"
tools/install-deps.sh
swift build -c release --product kaa >/dev/null
kaa="$(swift build -c release --show-bin-path)/kaa"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 tools/gen-large-onnx.py "$work/model.onnx" "$size_mb"
bytes=$(stat -c %s "$work/model.onnx")
sync

now() { date +%s.%N; }
rate() { python3 -c "import sys; b,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{b/t/1e6:.0f} MB/s ({t:.2f} s)')" "$1" "$2"; }

t0=$(now); "$kaa" snapshot build --model "$work/model.onnx" --name bench --version 1 --out "$work/bench.kaa" >/dev/null; t1=$(now)
build_s=$(python3 -c "print($t1-$t0)")
t0=$(now); "$kaa" snapshot verify "$work/bench.kaa" >/dev/null; t1=$(now)
verify_s=$(python3 -c "print($t1-$t0)")
t0=$(now); lz4 -q -f "$work/model.onnx" "$work/model.lz4"; t1=$(now)
lz4_s=$(python3 -c "print($t1-$t0)")
t0=$(now); sha256sum "$work/model.onnx" >/dev/null; t1=$(now)
sha_s=$(python3 -c "print($t1-$t0)")
t0=$(now); lz4 -d -q -c "$work/bench.kaa" >/dev/null; t1=$(now)
unlz4_s=$(python3 -c "print($t1-$t0)")
archive=$(stat -c %s "$work/bench.kaa")

echo "command: tools/bench-snapshot.sh $size_mb   (model $bytes bytes, archive $archive bytes, $(nproc) CPUs)"
echo "kaa snapshot build   $(rate "$bytes" "$build_s")   [hash pass + hash/compress/write pass]"
echo "kaa snapshot verify  $(rate "$bytes" "$verify_s")   [decompress + SHA-256 of every byte]"
echo "baseline lz4 -1      $(rate "$bytes" "$lz4_s")"
echo "baseline lz4 -d      $(rate "$bytes" "$unlz4_s")"
echo "baseline sha256sum   $(rate "$bytes" "$sha_s")"
