#!/usr/bin/env bash
# Benchmark (not a test): how long five live `kaa node` processes on loopback take to see a
# SIGKILLed member as dead, with the default gossip settings. Each round starts a fresh
# five-node cluster, kills one non-seed node, and records, for each of the four survivors, the
# time from the kill until its /kaa/v1/members shows the victim dead (polled every 20 ms).
# Prints p50/p99/max over all samples. Usage: tools/bench-failure-detection.sh [rounds, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
tools/install-deps.sh
swift build -c release --product kaa >/dev/null
kaa=.build/release/kaa
work=$(mktemp -d /tmp/kaa-bench-fd.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$kaa" keys cluster --out "$work/cluster.key" >/dev/null
now() { date +%s.%N; }
samples=()
for r in $(seq "$rounds"); do
  base=$((21000 + (r % 20) * 20)); pids=()
  for i in 1 2 3 4 5; do
    seeds=(); [ "$i" -gt 1 ] && seeds=(--seeds "127.0.0.1:$((base + 10))")
    "$kaa" node --data-dir "$work/r$r-n$i" --node-name "n$i" --http-addr "127.0.0.1:$((base + i))" \
      --peer-addr "127.0.0.1:$((base + 9 + i))" --cluster-key-file "$work/cluster.key" --log-level error "${seeds[@]}" 2>/dev/null &
    pids+=($!)
  done
  for _ in $(seq 200); do   # converge: every node sees five alive
    ok=1
    for i in 1 2 3 4 5; do
      n=$(curl -sf "http://127.0.0.1:$((base + i))/kaa/v1/members" | grep -o '"status":"alive"' | wc -l || true)
      [ "$n" -eq 5 ] || ok=0
    done
    [ $ok -eq 1 ] && break; sleep 0.05
  done
  victim=$((2 + RANDOM % 4))
  start=$(now); kill -9 "${pids[$((victim - 1))]}"
  declare -A seen=()
  while [ ${#seen[@]} -lt 4 ]; do
    for i in 1 2 3 4 5; do
      [ "$i" -eq "$victim" ] && continue; [ -n "${seen[$i]:-}" ] && continue
      if curl -sf "http://127.0.0.1:$((base + i))/kaa/v1/members" | grep -q "\"name\":\"n$victim\"[^}]*\"status\":\"dead\"\|\"status\":\"dead\"[^}]*\"name\":\"n$victim\""; then
        seen[$i]=$(awk -v a="$(now)" -v b="$start" 'BEGIN {printf "%.3f", a - b}')
      fi
    done
    awk -v a="$(now)" -v b="$start" 'BEGIN {exit !(a - b > 30)}' && { echo "round $r: not detected within 30 s" >&2; break; }
    sleep 0.02
  done
  echo "round $r: killed n$victim; detected after ${seen[*]} s"
  samples+=("${seen[@]}")
  unset seen
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
done
printf '%s\n' "${samples[@]}" | sort -g | awk '{a[NR]=$1} END {
  p50 = a[int(NR*0.50 + 0.5) > 0 ? int(NR*0.50 + 0.5) : 1]; p99 = a[int(NR*0.99 + 0.5) > 0 ? int(NR*0.99 + 0.5) : 1];
  printf "failure detection, 5 live nodes, %d samples: p50 %.2f s, p99 %.2f s, max %.2f s\n", NR, p50, p99, a[NR] }'
echo "reproduce: tools/bench-failure-detection.sh $rounds"
