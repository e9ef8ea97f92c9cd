#!/usr/bin/env bash
# Benchmark (not a test): `GET /v2/health/live` on a Kaa node against nginx (1 worker process,
# `return 200` with the same empty body), both under wrk on loopback, in the same run.
# Usage: tools/bench-http.sh [seconds per round, default 10] [connections, default 32] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}; connections=${2:-32}; rounds=${3:-3}
tools/install-deps.sh
swift build -c release --product kaa >/dev/null

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

.build/release/kaa node --data-dir "$work/data" --http-addr 127.0.0.1:$kaa_port \
  --peer-addr 127.0.0.1:$peer_port --log-level warning & kaa_pid=$!
nginx -c "$work/nginx.conf" -p "$work" & nginx_pid=$!
cleanup() { kill "$kaa_pid" "$nginx_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for port in $kaa_port $nginx_port; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/health/live" >/dev/null && break; sleep 0.1; done
done

# wrk's latency percentiles in microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} }'; }
run() {
  local out; out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$1/v2/health/live")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
  echo "$rps $p50 $p99"
}

wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$kaa_port/v2/health/live" >/dev/null   # warm-up
wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$nginx_port/v2/health/live" >/dev/null
kaa_rps=(); nginx_rps=(); kaa_p50=(); kaa_p99=(); nginx_p50=(); nginx_p99=()
for r in $(seq "$rounds"); do   # interleaved rounds, so both see the same machine
  read -r a b c < <(run $kaa_port);   kaa_rps+=("$a");   kaa_p50+=("$b");   kaa_p99+=("$c")
  read -r a b c < <(run $nginx_port); nginx_rps+=("$a"); nginx_p50+=("$b"); nginx_p99+=("$c")
  echo "round $r: kaa ${kaa_rps[-1]} req/s, nginx ${nginx_rps[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
k=$(median "${kaa_rps[@]}"); n=$(median "${nginx_rps[@]}")
printf '\n%-8s %12s %10s %10s\n' server "req/s" "p50 (us)" "p99 (us)"
printf '%-8s %12.0f %10s %10s\n' kaa "$k" "$(median "${kaa_p50[@]}")" "$(median "${kaa_p99[@]}")"
printf '%-8s %12.0f %10s %10s\n' nginx "$n" "$(median "${nginx_p50[@]}")" "$(median "${nginx_p99[@]}")"
printf 'ratio kaa/nginx: %.2fx (median of %s interleaved rounds, %ss each, %s connections, wrk -t1)\n' \
  "$(awk -v a="$k" -v b="$n" 'BEGIN {print a/b}')" "$rounds" "$duration" "$connections"
echo "reproduce: tools/bench-http.sh $duration $connections $rounds"
