#!/usr/bin/env bash
# Benchmark (not a test): what sending a call on to a holder costs. Two release nodes on
# loopback; iris (snapshots/iris-logreg, built with --requires gpu) lives only on `holder`
# (--gpus 1), so every call to `entry` (--gpus 0) is forwarded over the peer plane. wrk sends
# the same small JSON body to each in turn, interleaved rounds:
#   - one connection: latency p50/p99 direct and forwarded, and the difference (the added latency);
#   - CONNECTIONS connections: throughput direct and forwarded, and their ratio.
# Everything shares this machine's cores (wrk, both nodes), so forwarding also pays for the
# second node's CPU here. Every process is stopped by pid and the data removed on exit.
#
# Usage: tools/bench-forwarding.sh [SECONDS per run, default 5] [ROUNDS, default 3] [CONNECTIONS, default 16]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5}; rounds=${2:-3}; connections=${3:-16}
source tools/bench-wrk-common.sh
bench_cluster_setup bench-forwarding
"$kaa" keys cluster --out "$work/cluster.key" >/dev/null
"$kaa" snapshot build --model snapshots/iris-logreg/model.onnx --name iris --version 1 --requires gpu --out "$work/iris.kaa" >/dev/null
base=$((20000 + RANDOM % 20000))
start() { # name http peer gpus [seeds]
  local args=(node --data-dir "$work/$1" --http-addr "127.0.0.1:$2" --peer-addr "127.0.0.1:$3" --node-name "$1"
              --cluster-key-file "$work/cluster.key" --gpus "$4" --log-level warning)
  [ -n "${5:-}" ] && args+=(--seeds "$5")
  "$kaa" "${args[@]}" 2>>"$work/$1.log" & pids+=($!)
  for _ in $(seq 3000); do curl -sf -o /dev/null "http://127.0.0.1:$2/v2/health/ready" && return 0; sleep 0.01; done
  echo "bench-forwarding: $1 did not start" >&2; exit 1
}
holder=$base; entry=$((base + 2))
start holder "$holder" $((base + 1)) 1
start entry "$entry" $((base + 3)) 0 "127.0.0.1:$((base + 1))"
"$kaa" publish "$work/iris.kaa" --to "http://127.0.0.1:$entry" >/dev/null
for _ in $(seq 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
      -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}' \
      "http://127.0.0.1:$entry/v2/models/iris/infer")" = 200 ] && break
  sleep 0.1
done
served_by=$(curl -s -D - -o /dev/null -X POST -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}' \
  "http://127.0.0.1:$entry/v2/models/iris/infer" | awk -F': ' 'tolower($1) == "kaa-served-by" {print $2}' | tr -d '\r')
[ "$served_by" = holder ] || { echo "bench-forwarding: a call to entry was served by '$served_by', not forwarded to holder" >&2; exit 1; }

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
run() { # port connections -> "rps p50_us p99_us"
  local out; out=$(wrk -t1 -c"$2" -d"${duration}s" --latency -s "$work/post.lua" "http://127.0.0.1:$1/v2/models/iris/infer")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_us)
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out" | to_us)
  echo "$rps $p50 $p99"
}
wrk -t1 -c1 -d1s -s "$work/post.lua" "http://127.0.0.1:$holder/v2/models/iris/infer" >/dev/null
wrk -t1 -c1 -d1s -s "$work/post.lua" "http://127.0.0.1:$entry/v2/models/iris/infer" >/dev/null
d50=(); d99=(); f50=(); f99=(); drps=(); frps=()
for _ in $(seq "$rounds"); do
  read -r _ a b <<<"$(run "$holder" 1)"; d50+=("$a"); d99+=("$b")
  read -r _ a b <<<"$(run "$entry" 1)"; f50+=("$a"); f99+=("$b")
  read -r a _ _ <<<"$(run "$holder" "$connections")"; drps+=("$a")
  read -r a _ _ <<<"$(run "$entry" "$connections")"; frps+=("$a")
done
D50=$(median "${d50[@]}"); D99=$(median "${d99[@]}"); F50=$(median "${f50[@]}"); F99=$(median "${f99[@]}")
DR=$(median "${drps[@]}"); FR=$(median "${frps[@]}")
echo "one connection: direct p50 ${D50} us, p99 ${D99} us; forwarded p50 ${F50} us, p99 ${F99} us;" \
     "added p50 $(awk -v a="$F50" -v b="$D50" 'BEGIN {printf "%.0f", a - b}') us, p99 $(awk -v a="$F99" -v b="$D99" 'BEGIN {printf "%.0f", a - b}') us"
echo "$connections connections: direct ${DR} calls/s, forwarded ${FR} calls/s, forwarded/direct $(awk -v a="$FR" -v b="$DR" 'BEGIN {printf "%.2f", a / b}')"
echo "(medians of $rounds interleaved rounds, ${duration}s each, wrk -t1, nothing pinned; tools/bench-forwarding.sh $duration $rounds $connections)"
