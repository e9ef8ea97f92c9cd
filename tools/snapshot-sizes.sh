#!/usr/bin/env bash
# Archive size against the raw ONNX file for every *.onnx in the given directories.
# Usage: tools/snapshot-sizes.sh DIR...  (e.g. tools/snapshot-sizes.sh snapshots/*/)    (uses the debug `kaa` unless KAA=path is set)
set -euo pipefail
cd "$(dirname "$0")/.."
kaa="${KAA:-$(swift build --show-bin-path)/kaa}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "command: tools/snapshot-sizes.sh $*"
printf '%-28s %12s %12s %8s\n' MODEL "ONNX BYTES" "KAA BYTES" "KAA/ONNX"
for dir in "$@"; do
  for f in "$dir"/*.onnx; do
    [ -e "$f" ] || continue
    n="$(basename "$f" .onnx)"; [ "$n" = model ] && n="$(basename "$(dirname "$f")")"   # snapshots/NAME/model.onnx
    n="$(echo "$n" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9._\n-' '-')"
    "$kaa" snapshot build --model "$f" --name "$n" --version 1 --created-at 2026-01-01T00:00:00Z --out "$work/$n.kaa" >/dev/null
    raw=$(stat -c %s "$f"); kaa_bytes=$(stat -c %s "$work/$n.kaa")
    printf '%-28s %12d %12d %7.1f%%\n' "$n" "$raw" "$kaa_bytes" "$(python3 -c "print($kaa_bytes*100/$raw)")"
  done
done
