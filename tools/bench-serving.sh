#!/usr/bin/env bash
# Benchmark (not a test): Open Inference Protocol inference of the digits MLP (one 64-float row
# per request, JSON) on a release Kaa node and, in the same run, on the same ONNX file behind
# FastAPI + uvicorn (1 worker, uvloop + httptools) + onnxruntime (intra_op_num_threads=1,
# inter_op_num_threads=1), both under wrk with the SAME request body; plus the node's own
# `GET /v2/health/live` rate. Prints req/s, p50, p99 of each, Kaa/FastAPI and Kaa infer as a
# share of Kaa health, against the goals (>= 50x FastAPI, p99 <= 2 ms, >= 60% of health).
#
# It also measures the node's floor for an exchange of this size: the same POST body sent to
# `POST /v2/repository/index`, which reads it and answers a small JSON document with no model
# work. From the floor and health it prints what each goal leaves for the inference work itself
# (reading the tensor, running the model, writing the answer), in server CPU per request.
#
# Pinning (a 2-core machine): wrk runs on CPU 0 with one thread; each server runs on CPU 1
# (taskset, every thread of the process), so each side gets one core and the load generator never
# competes with the server it measures. The servers are measured one at a time; rounds interleave
# Kaa and FastAPI so both see the same background load, and each figure is the median of rounds.
#
# Usage: tools/bench-serving.sh [seconds per run, default 10] [connections, default 32] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}; connections=${2:-32}; rounds=${3:-3}
tools/install-deps.sh
python=$(tools/python-env.sh bench)
swift build -c release --product kaa >/dev/null
kaa=$PWD/.build/release/kaa

source tools/bench-wrk-common.sh

bench_workspace bench-serving
kaa_port=$((20000 + RANDOM % 10000)); peer_port=$((kaa_port + 1)); fastapi_port=$((kaa_port + 2))

"${pin_server[@]}" "$kaa" node --data-dir "$work/data" --http-addr 127.0.0.1:$kaa_port \
  --peer-addr 127.0.0.1:$peer_port --log-level warning 2>"$work/kaa.log" & kaa_pid=$!; pids+=($kaa_pid)
"${pin_server[@]}" "$python" tools/bench-serving-fastapi.py --model snapshots/digits-mlp/model.onnx \
  --port $fastapi_port 2>"$work/fastapi.log" & fastapi_pid=$!; pids+=($fastapi_pid)
for port in $kaa_port $fastapi_port; do
  for i in $(seq 200); do curl -sf "http://127.0.0.1:$port/v2/health/live" >/dev/null && break; sleep 0.1
    if [ "$i" = 200 ]; then echo "bench-serving: no server on port $port" >&2; cat "$work"/*.log >&2; exit 1; fi; done
done
"$kaa" publish --model snapshots/digits-mlp/model.onnx --name digits --version 1 \
  --to http://127.0.0.1:$kaa_port >/dev/null

# The request body: the first row of the digits fixture, one 64-float row.
write_digits_request "$work" "$python"

# Both servers must answer the body with 200 and the same probabilities (and onnxruntime's
# reference values from the fixture) before anything is timed.
"$python" - "$work/body.json" $kaa_port $fastapi_port <<'PY'
import json, sys, urllib.error, urllib.request
import numpy as np
body = open(sys.argv[1], "rb").read()
want = json.load(open("Tests/KaaEngineTests/Fixtures/digits-mlp/outputs.json"))
want_p = np.array(want["output_probability"]["data"][:10], dtype=np.float32)
want_l = want["output_label"]["data"][0]
for name, port in (("kaa", sys.argv[2]), ("fastapi", sys.argv[3])):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/infer", body,
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        sys.exit(f"bench-serving: {name} answers HTTP {e.code}: {e.read()[:300]!r}")
    outputs = {o["name"]: o for o in answer["outputs"]}
    p = np.array(outputs["output_probability"]["data"], dtype=np.float32)
    label = outputs["output_label"]["data"][0]
    if not (np.allclose(p, want_p, rtol=1e-5, atol=1e-6) and label == want_l):
        sys.exit(f"bench-serving: {name} answers label {label}, probabilities {p}; expected {want_l}, {want_p}")
print(f"both servers answer label {want_l}, probabilities within 1e-5 of onnxruntime's reference")
PY

bad_responses=0
run() { # server-pid url [lua script] -> "rps p50 p99 non2xx socketerrors cpu-us-per-request"
  local pid=$1 url=$2; shift 2
  local before; before=$(cpu_ticks "$pid")
  local out; out=$("${pin_client[@]}" wrk -t1 -c"$connections" -d"${duration}s" --latency "$@" "$url")
  local after; after=$(cpu_ticks "$pid")
  local rps p50 p99 non2xx errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
  non2xx=$(awk '/Non-2xx or 3xx responses/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  errors=$(awk '/Socket errors/ {gsub(",", ""); print $4+$6+$8+$10}' <<<"$out"); errors=${errors:-0}
  local requests; requests=$(awk '/requests in/ {print $1}' <<<"$out")
  local cpu; cpu=$(awk -v t=$((after - before)) -v hz="$tck" -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  echo "$rps $p50 $p99 $non2xx $errors $cpu"
}
infer_url=/v2/models/digits/infer
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs; $pinning)"
"${pin_client[@]}" wrk -t1 -c"$connections" -d2s -s "$work/post.lua" "http://127.0.0.1:$kaa_port$infer_url" >/dev/null      # warm-up
"${pin_client[@]}" wrk -t1 -c"$connections" -d2s -s "$work/post.lua" "http://127.0.0.1:$fastapi_port$infer_url" >/dev/null
declare -A rps p50 p99 cpu
for r in $(seq "$rounds"); do
  for case in kaa-infer kaa-health kaa-floor fastapi-infer; do
    case $case in
      kaa-infer) set -- $kaa_pid "http://127.0.0.1:$kaa_port$infer_url" -s "$work/post.lua" ;;
      kaa-health) set -- $kaa_pid "http://127.0.0.1:$kaa_port/v2/health/live" ;;
      kaa-floor) set -- $kaa_pid "http://127.0.0.1:$kaa_port/v2/repository/index" -s "$work/post.lua" ;;
      fastapi-infer) set -- $fastapi_pid "http://127.0.0.1:$fastapi_port$infer_url" -s "$work/post.lua" ;;
    esac
    read -r a b c n e u < <(run "$@")
    rps[$case]+="$a "; p50[$case]+="$b "; p99[$case]+="$c "; cpu[$case]+="$u "
    if [ "$n" != 0 ] || [ "$e" != 0 ]; then
      echo "round $r $case: $n non-2xx responses, $e socket errors" >&2; bad_responses=1
    fi
  done
  echo "round $r: kaa infer $(awk '{print $NF}' <<<"${rps[kaa-infer]}") req/s, kaa health $(awk '{print $NF}' <<<"${rps[kaa-health]}") req/s, kaa floor $(awk '{print $NF}' <<<"${rps[kaa-floor]}") req/s, fastapi infer $(awk '{print $NF}' <<<"${rps[fastapi-infer]}") req/s"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n%-14s %12s %10s %10s %16s\n' "" "req/s" "p50 (us)" "p99 (us)" "server CPU/req"
for case in kaa-infer kaa-health kaa-floor fastapi-infer; do
  printf '%-14s %12.0f %10s %10s %13s us\n' "$case" "$(median "${rps[$case]}")" "$(median "${p50[$case]}")" "$(median "${p99[$case]}")" "$(median "${cpu[$case]}")"
done
k=$(median "${rps[kaa-infer]}"); h=$(median "${rps[kaa-health]}"); f=$(median "${rps[fastapi-infer]}")
kp99=$(median "${p99[kaa-infer]}")
ratio=$(awk -v a="$k" -v b="$f" 'BEGIN {printf "%.1f", a/b}')
share=$(awk -v a="$k" -v b="$h" 'BEGIN {printf "%.0f", 100*a/b}')
verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo MISSED; fi; }
echo
echo "kaa/fastapi infer:      ${ratio}x   (goal >= 50x: $(verdict "$ratio >= 50"))"
echo "kaa infer p99:          ${kp99} us  (goal <= 2000 us: $(verdict "$kp99 <= 2000"))"
echo "kaa infer / kaa health: ${share}%   (goal >= 60%: $(verdict "$share >= 60"))"
kc=$(median "${cpu[kaa-infer]}"); hc=$(median "${cpu[kaa-health]}"); fc=$(median "${cpu[fastapi-infer]}")
echo "by server CPU time per request (less sensitive to other load on a shared machine):"
echo "  fastapi/kaa CPU per infer: $(awk -v a="$fc" -v b="$kc" 'BEGIN {printf "%.1f", a/b}')x;  kaa health/infer CPU: $(awk -v a="$hc" -v b="$kc" 'BEGIN {printf "%.0f", 100*a/b}')%"
lc=$(median "${cpu[kaa-floor]}"); l=$(median "${rps[kaa-floor]}")
echo "what each goal leaves for the inference work (reading the tensor, running the model, writing the answer):"
echo "  50x fastapi is $(awk -v f="$f" 'BEGIN {printf "%.0f", 50*f}') req/s; this node's empty health route does $(awk -v h="$h" 'BEGIN {printf "%.0f", h}') req/s and its floor for a POST of this body $(awk -v l="$l" 'BEGIN {printf "%.0f", l}') req/s"
echo "  60% of health allows $(awk -v h="$hc" 'BEGIN {printf "%.1f", h/0.6}') us of server CPU per infer request; the floor takes $lc us, leaving $(awk -v h="$hc" -v l="$lc" 'BEGIN {printf "%.1f", h/0.6-l}') us; infer now takes $(awk -v k="$kc" -v l="$lc" 'BEGIN {printf "%.1f", k-l}') us over the floor"
echo "(medians of $rounds interleaved rounds, ${duration}s each, $connections connections, wrk -t1; $pinning)"
if [ "$bad_responses" != 0 ]; then echo "bench-serving: some responses were not 2xx or sockets failed; figures are not valid" >&2; fi
echo "reproduce: tools/bench-serving.sh $duration $connections $rounds"
exit "$bad_responses"
