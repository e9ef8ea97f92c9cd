#!/usr/bin/env bash
# Benchmark (not a test): one release node with COUNT registered iris-sized snapshots.
#   1. builds COUNT distinct archives (iris-logreg as m00000, m00001, ... each its own name, so its
#      own manifest and digest) with `kaa snapshot build`, one process per archive, 4 x NPROC at once (each waits on I/O more than it computes);
#   2. publishes them to a running node with `kaa publish DIR` (the node verifies each upload and
#      writes its own store and catalog, as in production), then stops that node;
#   3. measures, on a fresh start of the same data directory: start time until
#      `GET /v2/health/ready` answers 200 (catalog read and every snapshot registered); RSS with
#      COUNT registered and none loaded (next to an empty node's); cold first-request latency of
#      LOADED distinct models (one infer each, sequential, one keep-alive connection) against warm
#      latency of the same calls again; latency of a request naming a model that does not exist
#      (its 404 lists registered names); RSS with LOADED models loaded.
# Cold here means "not loaded": the archives are in the OS page cache (just written); dropping
# the page cache would disturb everything else on the machine, so it is not done.
# Data lives in a temporary directory that is removed at the end; every process is stopped by pid.
#
# Usage: tools/bench-many-models.sh [COUNT, default 10000] [LOADED, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}; loaded=${2:-1000}
if [ "$loaded" -gt "$count" ]; then echo "bench-many-models: LOADED ($loaded) must not exceed COUNT ($count)" >&2; exit 2; fi
tools/install-deps.sh
swift build -c release --product kaa >/dev/null
kaa=$PWD/.build/release/kaa
model=$PWD/snapshots/iris-logreg/model.onnx

work=$(mktemp -d /tmp/kaa-bench-many.XXXXXX)
port=$((20000 + RANDOM % 10000)); peer_port=$((port + 1))
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
start_node() { # data dir -> sets node_pid; returns once /v2/health/ready answers 200
  "$kaa" node --data-dir "$1" --http-addr 127.0.0.1:$port --peer-addr 127.0.0.1:$peer_port \
    --log-level warning 2>>"$work/node.log" & node_pid=$!
  for _ in $(seq 6000); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready" && return 0
    kill -0 "$node_pid" 2>/dev/null || { echo "bench-many-models: the node exited" >&2; cat "$work/node.log" >&2; exit 1; }
    sleep 0.005
  done
  echo "bench-many-models: the node did not become ready in 60 s" >&2; exit 1
}
stop_node() { kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=""; }
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$node_pid/status"; }
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"

# 1. COUNT archives.
mkdir -p "$work/archives"
t0=$(now_ms)
seq 0 $((count - 1)) | xargs -P "$(( $(nproc) * 4 ))" -I{} sh -c \
  'n=$(printf "m%05d" "$1"); "$0" snapshot build --model "$2" --name "$n" --version 1 --out "$3/$n.kaa" >/dev/null' \
  "$kaa" {} "$model" "$work/archives"
t1=$(now_ms)
built=$(find "$work/archives" -name '*.kaa' | wc -l)
[ "$built" = "$count" ] || { echo "bench-many-models: built $built archives, expected $count" >&2; exit 1; }
echo "built $count archives ($(du -sh "$work/archives" | cut -f1)) in $(( (t1 - t0) / 1000 )).$(( (t1 - t0) % 1000 / 100 )) s"

# 2. Publish them to a node, which writes its own store; then stop it.
start_node "$work/data"
t0=$(now_ms)
"$kaa" publish "$work/archives" --parallel 8 --to "http://127.0.0.1:$port" >"$work/publish.log" 2>&1 \
  || { tail -20 "$work/publish.log" >&2; exit 1; }
t1=$(now_ms)
echo "published $count snapshots in $(( (t1 - t0) / 1000 )).$(( (t1 - t0) % 1000 / 100 )) s: $(tail -1 "$work/publish.log")"
stop_node
# Write the 10,000 new files out now, so that the kernel's writeback of them does not run
# during the measurements below.
sync

# An empty node, for reference.
start_node "$work/empty"
sleep 1
empty_rss=$(rss_mib)
stop_node

# 3. Start with COUNT registered snapshots.
t0=$(date +%s%N)
start_node "$work/data"
t1=$(date +%s%N)
start_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) / 1e6}')
registered=$(metric kaa_models_registered)
[ "${registered%.*}" = "$count" ] || { echo "bench-many-models: $registered registered, expected $count" >&2; exit 1; }
sleep 1
registered_rss=$(rss_mib)

# Cold first requests to LOADED distinct models, then the same calls warm.
latencies=$(python3 - "$port" "$loaded" <<'PY'
import http.client, json, sys, time
port, loaded = int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(i, name=None, status=200):
    name = name or f"m{i:05d}"
    t = time.perf_counter_ns()
    conn.request("POST", f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    elapsed = (time.perf_counter_ns() - t) / 1e3
    if r.status != status:
        sys.exit(f"{name}: HTTP {r.status} {data[:200]!r}")
    return elapsed
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
cold = [call(i) for i in range(loaded)]
warm = [call(i) for i in range(loaded)]
unknown = [call(i, name="no-such-model", status=404) for i in range(200)]
print(f"{pct(cold, 50):.0f} {pct(cold, 99):.0f} {sum(cold) / len(cold):.0f} {pct(warm, 50):.0f} {pct(warm, 99):.0f} {sum(warm) / len(warm):.0f} {pct(unknown, 50):.0f} {pct(unknown, 99):.0f}")
PY
)
read -r cold50 cold99 coldmean warm50 warm99 warmmean unknown50 unknown99 <<<"$latencies"
sleep 1
loaded_models=$(metric kaa_models_loaded)
loaded_bytes=$(metric kaa_model_loaded_bytes)
loaded_rss=$(rss_mib)
stop_node
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

per_model=$(awk -v a="$loaded_rss" -v b="$registered_rss" -v n="$loaded" 'BEGIN {printf "%.1f", (a - b) * 1024 / n}')
cat <<EOF

start until /v2/health/ready, $count registered:   $start_ms ms
RSS, empty node:                             $empty_rss MiB
RSS, $count registered, none loaded:        $registered_rss MiB
RSS, $count registered, $loaded loaded:     $loaded_rss MiB  (${per_model} KiB per loaded model; the node counts ${loaded_bytes%.*} model bytes in ${loaded_models%.*} models)
first request (cold, loads the model), $loaded distinct models:  p50 $cold50 us, p99 $cold99 us, mean $coldmean us
same calls warm:                                      p50 $warm50 us, p99 $warm99 us, mean $warmmean us
a model that does not exist (404 naming what does):   p50 $unknown50 us, p99 $unknown99 us
(one client, one keep-alive connection, sequential calls; latency measured by the client)
reproduce: tools/bench-many-models.sh $count $loaded
EOF
