#!/usr/bin/env bash
# Benchmark (not a test): repair after a SIGKILL on five release nodes on loopback.
#   1. builds COUNT distinct small archives (iris-logreg under the names r00000, r00001, ...,
#      each its own manifest and digest) and `probe` (the same model), with `kaa snapshot build`;
#   2. starts five nodes (replication 2, repair_grace GRACE seconds, placement_settle 5 s),
#      publishes everything to node 1 with `kaa publish DIR --parallel PARALLEL` (each upload answers
#      once two holders have it), and waits until every node reports nothing under-replicated;
#      prints the publish time, each node's RSS and the bytes of its store;
#   3. calls `probe` on a holder that survives, 200 calls a second (one connection, each call
#      timed), from 20 s before the kill to the end of the repair;
#   4. SIGKILLs the node that holds the most bytes and measures: when the survivors declare it
#      dead (their under-replicated count rises), when every survivor reports every snapshot back
#      at two ready holders, the bytes the survivors fetched, and probe's latency during the
#      repair (from the end of the grace to restored) against the 20 s before the kill.
# Everything runs on this machine: the five nodes, the publisher and the client share its cores.
# Every process is stopped by pid and the data removed on exit.
#
# Usage: tools/bench-repair.sh [COUNT, default 1000] [GRACE seconds, default 10] [PARALLEL uploads, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000}; grace=${2:-10}; parallel=${3:-8}
source tools/bench-wrk-common.sh
bench_cluster_setup bench-repair
model=$PWD/snapshots/iris-logreg/model.onnx

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { awk -v ms="$1" 'BEGIN {printf "%.1f", ms / 1000}'; }
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. The archives.
mkdir -p "$work/archives"
t0=$(now_ms)
seq 0 $((count - 1)) | xargs -P "$(( $(nproc) * 4 ))" -I{} sh -c \
  'n=$(printf "r%05d" "$1"); "$0" snapshot build --model "$2" --name "$n" --version 1 --out "$3/$n.kaa" >/dev/null' \
  "$kaa" {} "$model" "$work/archives"
"$kaa" snapshot build --model "$model" --name probe --version 1 --out "$work/archives/probe.kaa" >/dev/null
total=$((count + 1))
built=$(find "$work/archives" -name '*.kaa' | wc -l)
[ "$built" = "$total" ] || { echo "bench-repair: built $built archives, expected $total" >&2; exit 1; }
echo "built $total archives ($(du -sh "$work/archives" | cut -f1)) in $(secs $(( $(now_ms) - t0 ))) s"

# 2. Five nodes, and everything published to the first.
"$kaa" keys cluster --out "$work/cluster.key" >/dev/null
base=$((20000 + RANDOM % 20000))
http=(); node_pid=()
for i in 1 2 3 4 5; do
  h=$((base + 2 * i)); p=$((base + 2 * i + 1))
  args=(node --data-dir "$work/n$i" --http-addr "127.0.0.1:$h" --peer-addr "127.0.0.1:$p" --node-name "n$i"
        --cluster-key-file "$work/cluster.key" --replication 2 --repair-grace "${grace}s" --placement-settle 5s
        --log-level warning)
  [ "$i" -gt 1 ] && args+=(--seeds "127.0.0.1:$((base + 3))")
  "$kaa" "${args[@]}" 2>>"$work/n$i.log" &
  pids+=($!); node_pid+=($!); http+=("$h")
  for _ in $(seq 3000); do curl -sf -o /dev/null "http://127.0.0.1:$h/v2/health/ready" && break; sleep 0.01; done
done
alive() { curl -sf "http://127.0.0.1:$1/kaa/v1/members" | python3 -c \
  'import json, sys; print(sum(m["status"] == "alive" for m in json.load(sys.stdin)["members"]))'; }
for _ in $(seq 300); do [ "$(alive "${http[0]}")" = 5 ] && break; sleep 0.1; done
[ "$(alive "${http[0]}")" = 5 ] || { echo "bench-repair: the five nodes did not form a cluster" >&2; exit 1; }

t0=$(now_ms)
"$kaa" publish "$work/archives" --parallel "$parallel" --timeout 300 --to "http://127.0.0.1:${http[0]}" >"$work/publish.log" 2>&1 \
  || { tail -20 "$work/publish.log" >&2; exit 1; }
echo "published $total snapshots to one node, $parallel uploads at once, in $(secs $(( $(now_ms) - t0 ))) s (each answered once 2 holders had it): $(tail -1 "$work/publish.log")"

# Whether every node in "$@" (indices) counts `total` snapshots, none under-replicated, none fetching.
at_rest() {
  local i
  for i in "$@"; do
    [ "$(metric "${http[$i]}" kaa_placement_snapshots)" = "$total" ] || return 1
    [ "$(metric "${http[$i]}" kaa_snapshots_under_replicated)" = 0 ] || return 1
    [ "$(metric "${http[$i]}" kaa_copies_fetching)" = 0 ] || return 1
  done
}
t0=$(now_ms)
until at_rest 0 1 2 3 4; do
  [ $(( $(now_ms) - t0 )) -lt 300000 ] || { echo "bench-repair: the cluster did not settle in 300 s" >&2; exit 1; }
  sleep 0.2
done
sync
for i in 0 1 2 3 4; do
  echo "  n$((i + 1)): RSS $(awk '/^VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/${node_pid[$i]}/status")," \
       "$(find "$work/n$((i + 1))/snapshots" -name '*.kaa' -not -path '*/.*/*' -printf '%s\n' \
          | awk '{n++; b+=$1} END {printf "%d archives, %.1f MiB", n, b / 1048576}')," \
       "catalog $(du -cb "$work/n$((i + 1))"/catalog.sqlite* | awk 'END {printf "%.1f MiB", $1 / 1048576}')"
done

# 3. The victim (the node holding the most bytes) and a probe holder that survives.
read -r victim client_port <<<"$(curl -sf "http://127.0.0.1:${http[0]}/kaa/v1/placement" | python3 -c '
import json, sys
p = json.load(sys.stdin)
victim = max(p["load"], key=lambda n: (p["load"][n], n))
probe = next(s for s in p["snapshots"] if s["name"] == "probe")
holder = next(h for h in probe["holders"] if h["name"] != victim)
print(victim, holder["http_addr"].rsplit(":", 1)[1])')"
v=$(( ${victim#n} - 1 ))
survivors=(); for i in 0 1 2 3 4; do [ "$i" != "$v" ] && survivors+=("$i"); done
bytes_before=0; for i in "${survivors[@]}"; do bytes_before=$((bytes_before + $(metric "${http[$i]}" kaa_repair_bytes_total))); done

python3 - "$client_port" "$work/calls.txt" "$work/stop" <<'PY' &
import http.client, json, os, sys, time
port, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
with open(out, "w") as f:
    next_at = time.monotonic()
    while not os.path.exists(stop):
        start = time.time_ns()
        try:
            conn.request("POST", "/v2/models/probe/infer", body, {"Content-Type": "application/json"})
            r = conn.getresponse(); r.read(); status = r.status
        except Exception:
            status = 0; conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        f.write(f"{start} {(time.time_ns() - start) / 1000:.0f} {status}\n")
        next_at += 0.005
        time.sleep(max(0, next_at - time.monotonic()))
PY
pids+=($!); client=$!
sleep 20

# 4. The kill.
kill_ms=$(now_ms)
kill -9 "${node_pid[$v]}"; wait "${node_pid[$v]}" 2>/dev/null || true
detect_ms=""
until [ -n "$detect_ms" ]; do
  for i in "${survivors[@]}"; do
    [ "$(metric "${http[$i]}" kaa_snapshots_under_replicated)" != 0 ] && { detect_ms=$(now_ms); break; }
  done
  [ $(( $(now_ms) - kill_ms )) -lt 120000 ] || { echo "bench-repair: no survivor noticed the kill in 120 s" >&2; exit 1; }
  sleep 0.1
done
until at_rest "${survivors[@]}"; do
  [ $(( $(now_ms) - kill_ms )) -lt 900000 ] || { echo "bench-repair: no repair within 900 s" >&2; exit 1; }
  sleep 0.1
done
restored_ms=$(now_ms)
touch "$work/stop"; wait "$client" 2>/dev/null || true
bytes_after=0; for i in "${survivors[@]}"; do bytes_after=$((bytes_after + $(metric "${http[$i]}" kaa_repair_bytes_total))); done

echo
echo "SIGKILL of $victim (the most bytes) with $total snapshots on 5 nodes, replication 2, repair grace ${grace} s:"
echo "  declared dead (under-replicated seen) $(secs $((detect_ms - kill_ms))) s after the kill"
echo "  every snapshot back at 2 ready holders $(secs $((restored_ms - kill_ms))) s after the kill," \
     "$(secs $((restored_ms - detect_ms - grace * 1000))) s after the grace ended"
echo "  bytes fetched by the survivors: $(( bytes_after - bytes_before )) ($(awk -v b=$(( bytes_after - bytes_before )) 'BEGIN {printf "%.1f MiB", b / 1048576}'))"
python3 - "$work/calls.txt" "$kill_ms" "$(( detect_ms + grace * 1000 ))" "$restored_ms" <<'PY'
import sys
calls = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
kill, grace_end, restored = (int(x) * 1_000_000 for x in sys.argv[2:5])
def report(what, xs):
    ok = sorted(us for t, us, s in xs if s == 200)
    bad = sum(1 for _, _, s in xs if s != 200)
    if not ok:
        print(f"  probe {what}: no calls"); return
    pct = lambda p: ok[min(len(ok) - 1, int(round(p / 100 * (len(ok) - 1))))]
    print(f"  probe {what}: {len(ok)} calls, p50 {pct(50) / 1000:.2f} ms, p99 {pct(99) / 1000:.2f} ms, max {ok[-1] / 1000:.2f} ms, {bad} not 200")
report("before the kill (20 s)", [c for c in calls if c[0] < kill])
report("during the repair     ", [c for c in calls if grace_end <= c[0] <= restored])
PY
echo "(tools/bench-repair.sh $count $grace $parallel)"
