#!/usr/bin/env bash
# Benchmark (not a test): `GET /v2/health/live` on a Kaa node against nginx (1 worker process,
# `return 200` with the same empty body), both under wrk on loopback, in the same run.
#
# Pinning (a 2-core machine): wrk runs on CPU 0 with one thread, each server on CPU 1 (every
# thread of the process), so the load generator never competes with the server it measures.
# Rounds interleave the two servers; each round gives a paired ratio, and the figure is the
# median of those. Server CPU time per request (from /proc) is printed too: it is less sensitive
# to other load on a shared machine than req/s.
# Usage: tools/bench-http.sh [seconds per round, default 10] [connections, default 32] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}; connections=${2:-32}; rounds=${3:-3}
tools/install-deps.sh
swift build -c release --product kaa >/dev/null
source tools/bench-wrk-common.sh

work=$(mktemp -d /tmp/kaa-bench-http.XXXXXX)
kaa_port=$((20000 + RANDOM % 10000)); nginx_port=$((kaa_port + 1)); peer_port=$((kaa_port + 2))
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 200; }
  }
}
NGINX

"${pin_server[@]}" .build/release/kaa node --data-dir "$work/data" --http-addr 127.0.0.1:$kaa_port \
  --peer-addr 127.0.0.1:$peer_port --log-level warning & kaa_pid=$!
"${pin_server[@]}" nginx -c "$work/nginx.conf" -p "$work" & nginx_pid=$!
cleanup() { kill "$kaa_pid" "$nginx_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for port in $kaa_port $nginx_port; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/health/live" >/dev/null && break; sleep 0.1; done
done

run() { # port server-pid -> "rps p50 p99 cpu-us-per-request"
  local before; before=$(cpu_ticks "$2")
  local out; out=$("${pin_client[@]}" wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$1/v2/health/live")
  local after; after=$(cpu_ticks "$2")
  local rps p50 p99 requests
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $p50 $p99 $(awk -v t=$((after - before)) -v hz="$tck" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
}

# nginx's worker is the child of its master process: measure the worker's CPU.
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs; $pinning)"
"${pin_client[@]}" wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$kaa_port/v2/health/live" >/dev/null   # warm-up
"${pin_client[@]}" wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$nginx_port/v2/health/live" >/dev/null
kaa_rps=(); nginx_rps=(); kaa_p50=(); kaa_p99=(); nginx_p50=(); nginx_p99=(); kaa_cpu=(); nginx_cpu=(); ratios=()
for r in $(seq "$rounds"); do   # interleaved rounds, so both see the same machine
  read -r a b c d < <(run $kaa_port $kaa_pid);        kaa_rps+=("$a");   kaa_p50+=("$b");   kaa_p99+=("$c");   kaa_cpu+=("$d")
  read -r a b c d < <(run $nginx_port $nginx_worker); nginx_rps+=("$a"); nginx_p50+=("$b"); nginx_p99+=("$c"); nginx_cpu+=("$d")
  ratios+=("$(awk -v a="${kaa_rps[-1]}" -v b="${nginx_rps[-1]}" 'BEGIN {printf "%.3f", a/b}')")
  echo "round $r: kaa ${kaa_rps[-1]} req/s, nginx ${nginx_rps[-1]} req/s, ratio ${ratios[-1]}"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
k=$(median "${kaa_rps[@]}"); n=$(median "${nginx_rps[@]}")
kc=$(median "${kaa_cpu[@]}"); nc=$(median "${nginx_cpu[@]}")
printf '\n%-8s %12s %10s %10s %16s\n' server "req/s" "p50 (us)" "p99 (us)" "server CPU/req"
printf '%-8s %12.0f %10s %10s %13s us\n' kaa "$k" "$(median "${kaa_p50[@]}")" "$(median "${kaa_p99[@]}")" "$kc"
printf '%-8s %12.0f %10s %10s %13s us\n' nginx "$n" "$(median "${nginx_p50[@]}")" "$(median "${nginx_p99[@]}")" "$nc"
printf 'ratio kaa/nginx: %.2fx (median of the %s per-round ratios; goal >= 1.0x)\n' "$(median "${ratios[@]}")" "$rounds"
printf 'by server CPU per request, nginx/kaa: %.2fx\n' "$(awk -v a="$nc" -v b="$kc" 'BEGIN {print a/b}')"
printf '(%s interleaved rounds, %ss each, %s connections, wrk -t1; %s)\n' "$rounds" "$duration" "$connections" "$pinning"
echo "reproduce: tools/bench-http.sh $duration $connections $rounds"
