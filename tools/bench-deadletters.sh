#!/usr/bin/env bash
# Benchmark (not a test): serving through a paused holder, dead letters, and replay. Three
# release nodes on loopback: h1 and h2 (--gpus 1) hold iris (built with --requires gpu,
# replication 2); `entry` (--gpus 0) holds nothing, so every call to it is sent on to a holder.
#   1. latency through `entry` from a paced client (CONNECTIONS connections, 250 calls/s each,
#      every call timed): both holders healthy, then h1 paused (SIGSTOP) for PAUSE_MS of every
#      second; interleaved rounds, medians.
#   2. dead letters: both holders killed (SIGKILL); wrk sends calls to `entry` on one connection
#      for SECONDS, each ending in a dead letter (503); the client's p50/p99 of those calls is the
#      whole path: routing, the dead letter written durably to SQLite off the loop, the answer.
#   3. replay: both holders back on their data; the dead letters of iris replayed by filter at
#      the highest pace (`"rate": 1000`, at most 1,000 a request), timed: replays a second.
# Everything shares this machine's cores. Every process is stopped by pid and the data removed
# on exit.
#
# Usage: tools/bench-deadletters.sh [SECONDS per run, default 5] [ROUNDS, default 3] [CONNECTIONS, default 4] [PAUSE_MS, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5}; rounds=${2:-3}; connections=${3:-4}; pause_ms=${4:-300}
source tools/bench-wrk-common.sh
bench_cluster_setup bench-deadletters
"$kaa" keys cluster --out "$work/cluster.key" >/dev/null
"$kaa" snapshot build --model snapshots/iris-logreg/model.onnx --name iris --version 1 --requires gpu --out "$work/iris.kaa" >/dev/null
base=$((20000 + RANDOM % 20000))
declare -A pid_of
start() { # name http peer gpus [seeds]
  local args=(node --data-dir "$work/$1" --http-addr "127.0.0.1:$2" --peer-addr "127.0.0.1:$3" --node-name "$1"
              --cluster-key-file "$work/cluster.key" --gpus "$4" --replication 2 --repair-grace 600s --log-level warning)
  [ -n "${5:-}" ] && args+=(--seeds "$5")
  "$kaa" "${args[@]}" 2>>"$work/$1.log" & pids+=($!); pid_of[$1]=$!
  for _ in $(seq 3000); do curl -sf -o /dev/null "http://127.0.0.1:$2/v2/health/ready" && return 0; sleep 0.01; done
  echo "bench-deadletters: $1 did not start" >&2; exit 1
}
body='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
status_of_call() { curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$entry/v2/models/iris/infer"; }
entry=$base; h1=$((base + 2)); h2=$((base + 4))
start entry "$entry" $((base + 1)) 0
start h1 "$h1" $((base + 3)) 1 "127.0.0.1:$((base + 1))"
start h2 "$h2" $((base + 5)) 1 "127.0.0.1:$((base + 1))"
sleep 2
"$kaa" publish "$work/iris.kaa" --to "http://127.0.0.1:$entry" >/dev/null
# The publish went through `entry`, which streamed it on to both holders and keeps no copy.
served_by() { curl -s -D - -o /dev/null -X POST -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$entry/v2/models/iris/infer" \
                | awk -F': ' 'tolower($1) == "kaa-served-by" {print $2}' | tr -d '\r'; }
for _ in $(seq 300); do case "$(served_by)" in h1|h2) break ;; esac; sleep 0.1; done
case "$(served_by)" in h1|h2) ;; *) echo "bench-deadletters: calls to entry are not sent on to a holder" >&2; exit 1 ;; esac

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
run() { # connections -> "rps p50_us p99_us non2xx"
  local out; out=$(wrk -t1 -c"$1" -d"${duration}s" --latency -s "$work/post.lua" "http://127.0.0.1:$entry/v2/models/iris/infer")
  echo "$(awk '/^Requests\/sec/ {print $2}' <<<"$out") $(awk '$1 == "50%" {print $2}' <<<"$out" | to_us)" \
       "$(awk '$1 == "99%" {print $2}' <<<"$out" | to_us) $(awk '/Non-2xx/ {print $NF}' <<<"$out" | grep . || echo 0)"
}
metric() { curl -s "http://127.0.0.1:$entry/metrics" | awk -v n="$1" '$1 == n {print $2}'; }

# 1. A paused holder. Latency from a paced client: CONNECTIONS threads, each one connection
#    sending a call every 4 ms and timing each (every call is counted, none coordinated away).
pauser() { while true; do kill -STOP "${pid_of[h1]}"; sleep "$(awk -v p="$pause_ms" 'BEGIN {print p / 1000}')"
                          kill -CONT "${pid_of[h1]}"; sleep "$(awk -v p="$pause_ms" 'BEGIN {print (1000 - p) / 1000}')"; done; }
paced() { # seconds -> "calls p50_us p99_us p999_us max_us not200"
  python3 - "$entry" "$1" "$connections" "$body" <<'PY'
import http.client, sys, threading, time
port, seconds, threads, body = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
times, bad, lock = [], [0], threading.Lock()
def run():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        start = time.perf_counter_ns()
        try:
            conn.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
            r = conn.getresponse(); r.read(); ok = r.status == 200
        except Exception:
            ok = False; conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        took = (time.perf_counter_ns() - start) // 1000
        with lock:
            times.append(took)
            if not ok: bad[0] += 1
        next_at += 0.004
        time.sleep(max(0, next_at - time.monotonic()))
ts = [threading.Thread(target=run) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
times.sort()
pct = lambda p: times[min(len(times) - 1, int(len(times) * p / 100))]
print(len(times), pct(50), pct(99), pct(99.9), times[-1], bad[0])
PY
}
paced 1 >/dev/null
h=(); p=(); bad=0
resent_before=$(metric kaa_call_slow_retries_total); calls_before=$(metric kaa_calls_forwarded_total)
for _ in $(seq "$rounds"); do
  h+=("$(paced "$duration")")
  pauser & pauser_pid=$!; pids+=("$pauser_pid")
  p+=("$(paced "$duration")")
  kill "$pauser_pid"; wait "$pauser_pid" 2>/dev/null || true; kill -CONT "${pid_of[h1]}"
  sleep 1
done
resent=$(( $(metric kaa_call_slow_retries_total) - resent_before )); calls=$(( $(metric kaa_calls_forwarded_total) - calls_before ))
col() { local i=$1; shift; for r in "$@"; do echo "$r" | cut -d' ' -f"$i"; done; }
summary() { echo "p50 $(median $(col 2 "$@")) us, p99 $(median $(col 3 "$@")) us, p99.9 $(median $(col 4 "$@")) us, max $(median $(col 5 "$@")) us" \
                 "($(median $(col 1 "$@")) calls a round, $(col 6 "$@" | paste -sd+ | bc) not 200)"; }
echo "paced client, $connections connections x 250 calls/s, medians of $rounds rounds of ${duration}s:"
echo "  both holders healthy: $(summary "${h[@]}")"
echo "  h1 paused ${pause_ms} ms of every second: $(summary "${p[@]}")"
echo "  $resent of $calls calls sent to the other holder after a slow try (limit 100 ms)"

# 2. Dead letters: no holder left.
kill -KILL "${pid_of[h1]}" "${pid_of[h2]}"; wait "${pid_of[h1]}" "${pid_of[h2]}" 2>/dev/null || true
[ "$(status_of_call)" = 503 ] || { echo "bench-deadletters: a call with both holders gone did not end in a dead letter" >&2; exit 1; }
written_before=$(metric kaa_dead_letters_written_total)
read -r rps d50 d99 n <<<"$(run 1)"
written=$(( $(metric kaa_dead_letters_written_total) - written_before ))
echo "dead letters (1 connection, ${duration}s): $written written, ${rps} calls/s, each call to its 503 p50 ${d50} us, p99 ${d99} us"

# 3. Replay, once both holders are back.
start h1 "$h1" $((base + 3)) 1 "127.0.0.1:$((base + 1))"
start h2 "$h2" $((base + 5)) 1 "127.0.0.1:$((base + 1))"
for _ in $(seq 600); do [ "$(status_of_call)" = 200 ] && break; sleep 0.1; done
[ "$(status_of_call)" = 200 ] || { echo "bench-deadletters: the holders did not come back" >&2; exit 1; }
t0=$(date +%s.%N)
answer=$(curl -s -X POST -H 'Content-Type: application/json' -d '{"model":"iris","rate":1000}' "http://127.0.0.1:$entry/kaa/v1/deadletters/replay")
t1=$(date +%s.%N)
replayed=$(python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["replayed"], sum(1 for r in a["results"] if r.get("status") == 200 and r.get("ran_now")))' <<<"$answer")
read -r count ok <<<"$replayed"
echo "replay: $count dead letters replayed by filter in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s," \
     "$(awk -v a="$t0" -v b="$t1" -v n="$count" 'BEGIN {printf "%.0f", n / (b - a)}') replays/s ($ok ran now with 200)"
echo "(tools/bench-deadletters.sh $duration $rounds $connections $pause_ms)"
