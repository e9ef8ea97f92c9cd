#!/usr/bin/env bash
# The main job: builds Kaa and runs a local node in the foreground until Ctrl-C.
# What it shows grows with the project: today a node that answers health checks and
# peer pings. Usage: tools/run.sh [HTTP port, default 7070]
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-7070}
tools/install-deps.sh
swift build -c release --product kaa
kaa=.build/release/kaa
data=.kaa-run/node-1
mkdir -p "$data"

"$kaa" node --data-dir "$data" --http-addr "127.0.0.1:$port" --peer-addr "127.0.0.1:$((port + 876))" &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/health/live" >/dev/null && break; sleep 0.1; done

echo
echo "kaa node is up (pid $node, data in $data):"
echo "  curl -i http://127.0.0.1:$port/v2/health/live   ->  $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/health/live")"
echo "  curl http://127.0.0.1:$port/v2                  ->  $(curl -s "http://127.0.0.1:$port/v2")"
echo "Ctrl-C stops it gracefully."
wait $node
