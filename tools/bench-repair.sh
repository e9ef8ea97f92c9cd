#!/usr/bin/env bash
# Benchmark (not a test): COUNT snapshots (10,000 for the figures) on five release nodes on loopback: publish, idle
# traffic, cold and warm calls, and repair after a SIGKILL.
#   1. builds COUNT distinct small archives (iris-logreg under the names r00000, r00001, ...,
#      each its own manifest and digest) and `probe` (the same model), with `kaa snapshot build`;
#   2. starts five nodes (replication 2, repair_grace GRACE seconds, placement_settle 5 s),
#      publishes everything to node 1 with `kaa publish DIR --parallel PARALLEL` (each upload answers
#      once two holders have it), and waits until every node reports nothing under-replicated;
#      prints the publish time, each node's RSS and the bytes of its store;
#   3. at idle for 60 s: the gossip (UDP and push-pull) and holdings anti-entropy bytes each
#      node sends a second;
#   4. calls every snapshot once (cold: its holder loads it) and again (warm), in a random
#      order, each through a random node, 8 calls at a time: latency p50/p99 of each round;
#   5. calls `probe` on a holder that survives, 200 calls a second (one connection, each call
#      timed), from 20 s before the kill to the end of the repair;
#   6. SIGKILLs the node that holds the most bytes and measures: when the survivors declare it
#      dead (their under-replicated count rises), when every survivor reports every snapshot back
#      at two ready holders, the bytes the survivors fetched, and probe's latency during the
#      repair (from the end of the grace to restored) against the 20 s before the kill.
# Everything runs on this machine: the five nodes, the publisher and the client share its cores.
# Every process is stopped by pid and the data removed on exit.
#
# Usage: tools/bench-repair.sh [COUNT, default 1000] [GRACE seconds, default 10] [PARALLEL uploads, default 32, as kaa publish]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000}; grace=${2:-10}; parallel=${3:-32}
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

# 3. At idle: gossip and holdings anti-entropy bytes per node over 60 s, no calls, no publishes.
bytes_of() { curl -sf "http://127.0.0.1:$1/metrics" | awk '
  /^kaa_gossip_bytes_total\{direction="sent"/ {g += $2}
  /^kaa_holdings_exchange_bytes_total\{direction="sent"/ {h += $2}
  END {printf "%d %d\n", g, h}'; }
declare -a g0 h0
for i in 0 1 2 3 4; do read -r g0[$i] h0[$i] <<<"$(bytes_of "${http[$i]}")"; done
sleep 60
echo "at idle with $total snapshots, bytes sent per node per second over 60 s (gossip: UDP and push-pull; anti-entropy: holdings frames):"
for i in 0 1 2 3 4; do
  read -r g h <<<"$(bytes_of "${http[$i]}")"
  echo "  n$((i + 1)): gossip $(( (g - g0[i]) / 60 )) B/s, anti-entropy $(( (h - h0[i]) / 60 )) B/s"
done

# 4. Cold and warm calls: every snapshot called once (its holder loads it), then once more, in
#    a random order, each through a random node, 8 at a time.
python3 - "$total" "${http[@]}" <<'PY'
import http.client, json, random, sys, threading, time
total, ports = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
names = [f"r{i:05d}" for i in range(total - 1)] + ["probe"]
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
def round_(label, seed):
    order = names[:]; random.Random(seed).shuffle(order)
    lat, bad, lock, it = [], [0], threading.Lock(), iter(order)
    def work(w):
        rng = random.Random(seed * 100 + w)
        conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in ports}
        while True:
            with lock:
                name = next(it, None)
            if name is None: return
            p = rng.choice(ports); t = time.perf_counter()
            try:
                conns[p].request("POST", f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"})
                r = conns[p].getresponse(); r.read(); ok = r.status == 200
            except Exception:
                ok = False; conns[p] = http.client.HTTPConnection("127.0.0.1", p, timeout=30)
            with lock:
                if ok: lat.append(time.perf_counter() - t)
                else: bad[0] += 1
    t0 = time.time(); ts = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
    lat.sort(); pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(f"  {label}: {len(lat)} calls in {time.time() - t0:.1f} s, p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms, max {lat[-1] * 1000:.1f} ms, {bad[0]} not 200")
print(f"calls to each of the {total} snapshots through a random node of five, 8 at a time:")
round_("cold (first call of each)", 1)
round_("warm (second call of each)", 2)
PY

# 5. The victim (the node holding the most bytes) and a probe holder that survives.
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

# 6. The kill.
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
