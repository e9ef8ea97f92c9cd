#!/usr/bin/env bash
# Starts a local Kaa cluster of N nodes on loopback and keeps it in the foreground until
# Ctrl-C, which stops every node gracefully (SIGTERM by pid).
# Usage: cluster/local.sh [N=3] [first HTTP port=7070]   (KAA=path/to/kaa to use another binary)
# Unless KAA_SAMPLES=0, the sample snapshots are published once, to the first node, which
# places them on two nodes each (cluster/samples.sh), and their example rows are scored.
# Node i listens for HTTP on port+i-1 and for peers on port+876+i-1; data under .kaa-run/node-i.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-3}; base=${2:-7070}
kaa=${KAA:-.build/release/kaa}
[ -x "$kaa" ] || { echo "no kaa binary at $kaa; run: swift build -c release --product kaa" >&2; exit 1; }
mkdir -p .kaa-run
key=.kaa-run/cluster.key
[ -f "$key" ] || "$kaa" keys cluster --out "$key" >/dev/null
# The control API takes bearer tokens: one admin token for this local cluster, which the kaa
# commands below (and yours, with KAA_TOKEN_FILE) send.
tokens=.kaa-run/tokens
if [ ! -f .kaa-run/admin.token ] || [ ! -f "$tokens" ]; then
  rm -f .kaa-run/admin.token "$tokens"
  "$kaa" tokens create --scope admin --name local-admin --out .kaa-run/admin.token --append-to "$tokens" >/dev/null
fi
export KAA_TOKEN_FILE=.kaa-run/admin.token

pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

seed=127.0.0.1:$((base + 876))
for i in $(seq 1 "$count"); do
  http=$((base + i - 1)); peer=$((base + 876 + i - 1))
  seeds=(); [ "$i" -gt 1 ] && seeds=(--seeds "$seed")
  "$kaa" node --data-dir ".kaa-run/node-$i" --node-name "node-$i" --http-addr "127.0.0.1:$http" \
    --peer-addr "127.0.0.1:$peer" --cluster-key-file "$key" --tokens-file "$tokens" "${seeds[@]}" \
    2> >(sed -u "s/^/[node-$i] /" >&2) &
  pids+=($!)
done
for i in $(seq 1 "$count"); do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((base + i - 1))/v2/health/ready" >/dev/null && break; sleep 0.1; done
done
for _ in $(seq 50); do   # until the first node sees all of them
  n=$("$kaa" members --to "http://127.0.0.1:$base" --json 2>/dev/null | grep -o '"status":"alive"' | wc -l || true)
  [ "$n" -ge "$count" ] && break; sleep 0.2
done
echo
"$kaa" members --to "http://127.0.0.1:$base"
if [ "${KAA_SAMPLES:-1}" != 0 ]; then
  # Published once, to the first node: the cluster keeps each on `replication` (2) nodes.
  KAA="$kaa" cluster/samples.sh "http://127.0.0.1:$base"
fi
echo
echo "local cluster of $count nodes is up: HTTP on 127.0.0.1:$base..$((base + count - 1)); Ctrl-C stops it."
echo "try: export KAA_TOKEN_FILE=$PWD/.kaa-run/admin.token   # the control API needs a token"
echo "     $kaa members --to http://127.0.0.1:$base"
echo "     $kaa placement --to http://127.0.0.1:$base"
echo "     $kaa predict iris-logreg --to http://127.0.0.1:$base --input '{\"sepal_length\": 5.1, \"sepal_width\": 3.5, \"petal_length\": 1.4, \"petal_width\": 0.2}'   # any node answers"
echo "     $kaa deadletters list --to http://127.0.0.1:$base"
echo "     curl -s -H \"Authorization: Bearer \$(cat .kaa-run/admin.token)\" http://127.0.0.1:$base/metrics | grep kaa_"
wait "${pids[@]}"
