#!/usr/bin/env bash
# Builds a snapshot of every sample under snapshots/ (version 1, reproducible bytes, with its
# pipeline.yaml when there is one), publishes them once, to the first node given (the cluster
# places them and makes the copies), shows where they landed, and scores each sample's example
# rows (snapshots/NAME/example.jsonl) with `kaa predict` through that same node, which serves
# what it holds and sends the other calls on to a holder.
# Usage: cluster/samples.sh http://127.0.0.1:7070   (KAA=path/to/kaa)
set -euo pipefail
cd "$(dirname "$0")/.."
kaa=${KAA:-.build/release/kaa}
[ $# -ge 1 ] || { echo "usage: cluster/samples.sh NODE_URL..." >&2; exit 2; }
out=.kaa-run/snapshots
mkdir -p "$out"
for dir in snapshots/*/; do
  name=$(basename "$dir")
  [ -f "$dir/model.onnx" ] || continue
  args=(snapshot build --model "$dir/model.onnx" --name "$name" --version 1
        --created-at 2026-01-01T00:00:00Z --label sample=true --out "$out/$name.kaa")
  [ -f "$dir/pipeline.yaml" ] && args+=(--pipeline "$dir/pipeline.yaml")
  "$kaa" "${args[@]}" >/dev/null
done
if ! "$kaa" publish "$out" --to "$1"; then
  echo "publishing the samples to $1 failed; if a sample changed since the last run," \
       "its version 1 differs from the stored one: remove .kaa-run and start again" >&2
  exit 1
fi
echo
echo "\$ kaa placement --to $1"
"$kaa" placement --to "$1"
for dir in snapshots/*/; do
  name=$(basename "$dir")
  [ -f "$dir/example.jsonl" ] || continue
  holders=$("$kaa" placement --to "$1" --holders-of "$name" | tr '\n' ' ')
  echo
  echo "# $name is held by ${holders% }; any node answers for it"
  echo "\$ kaa predict $name --file $dir""example.jsonl --to $1"
  "$kaa" predict "$name" --file "$dir/example.jsonl" --to "$1"
done
