#!/usr/bin/env bash
# Benchmark (not a test): the serving path of two builds of Kaa side by side in one run — the
# working tree's and the one at git revision REV — so a change's effect on inference throughput
# is measured against noise, not against a figure from another day. Both release nodes serve the
# digits MLP (one 64-float JSON row per request, the same body) pinned to CPU 1, one loaded at a
# time, wrk -t1 on CPU 0; rounds alternate which build goes first. Prints each build's infer and
# health req/s and server CPU per request (medians), and new/old ratios.
#
# Usage: tools/bench-serving-ab.sh REV [seconds per run, default 10] [connections, default 32] [rounds, default 6]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: tools/bench-serving-ab.sh REV [seconds] [connections] [rounds]}
duration=${2:-10}; connections=${3:-32}; rounds=${4:-6}
tools/install-deps.sh
python=$(tools/python-env.sh bench)
commit=$(git rev-parse --short "$rev")
src=.build-ab/$commit
if [ ! -x "$src/.build/release/kaa" ]; then
  rm -rf "$src"; mkdir -p "$src"
  git archive "$commit" | tar -x -C "$src"
  echo "building $commit in $src (release) ..." >&2
  swift build -c release --product kaa --package-path "$src" >/dev/null
fi
swift build -c release --product kaa >/dev/null
old=$PWD/$src/.build/release/kaa
new=$PWD/.build/release/kaa

source tools/bench-wrk-common.sh

bench_workspace bench-ab
base=$((20000 + RANDOM % 10000))

declare -A port pid bin
bin[old]=$old; bin[new]=$new
port[old]=$base; port[new]=$((base + 2))
for b in old new; do
  "${pin_server[@]}" "${bin[$b]}" node --data-dir "$work/$b" --http-addr 127.0.0.1:${port[$b]} \
    --peer-addr 127.0.0.1:$((port[$b] + 1)) --log-level warning 2>"$work/$b.log" & pid[$b]=$!; pids+=(${pid[$b]})
  for i in $(seq 200); do curl -sf "http://127.0.0.1:${port[$b]}/v2/health/live" >/dev/null && break; sleep 0.1
    if [ "$i" = 200 ]; then echo "bench-serving-ab: the $b node did not start" >&2; cat "$work/$b.log" >&2; exit 1; fi; done
  "${bin[$b]}" publish --model snapshots/digits-mlp/model.onnx --name digits --version 1 \
    --to http://127.0.0.1:${port[$b]} >/dev/null
done

write_digits_request "$work" "$python"
for b in old new; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$work/body.json" \
    "http://127.0.0.1:${port[$b]}/v2/models/digits/infer")
  [ "$code" = 200 ] || { echo "bench-serving-ab: the $b node answers infer with HTTP $code" >&2; exit 1; }
done

bad=0
run() { # pid url [lua] -> "rps cpu-us-per-request"
  local p=$1 url=$2; shift 2
  local before; before=$(cpu_ticks "$p")
  local out; out=$("${pin_client[@]}" wrk -t1 -c"$connections" -d"${duration}s" "$@" "$url")
  local after; after=$(cpu_ticks "$p")
  if grep -q -e "Non-2xx" -e "Socket errors" <<<"$out"; then echo "$out" >&2; bad=1; fi
  local rps requests
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); requests=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $(awk -v t=$((after - before)) -v hz="$tck" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
}
echo "old: $commit ($(git log -1 --format=%cs "$commit")); new: the working tree at $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + changes')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs; $pinning)"
for b in old new; do "${pin_client[@]}" wrk -t1 -c"$connections" -d2s -s "$work/post.lua" "http://127.0.0.1:${port[$b]}/v2/models/digits/infer" >/dev/null; done
declare -A rps cpu
for r in $(seq "$rounds"); do
  order="old new"; [ $((r % 2)) = 0 ] && order="new old"
  line="round $r:"
  for b in $order; do
    read -r a u < <(run "${pid[$b]}" "http://127.0.0.1:${port[$b]}/v2/models/digits/infer" -s "$work/post.lua")
    rps[$b-infer]+="$a "; cpu[$b-infer]+="$u "
    read -r a u < <(run "${pid[$b]}" "http://127.0.0.1:${port[$b]}/v2/health/live")
    rps[$b-health]+="$a "; cpu[$b-health]+="$u "
    line+=" $b infer $(awk '{print $NF}' <<<"${rps[$b-infer]}") req/s, health $(awk '{print $NF}' <<<"${rps[$b-health]}");"
  done
  echo "$line"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n%-12s %12s %16s\n' "" "req/s" "server CPU/req"
for c in old-infer new-infer old-health new-health; do
  printf '%-12s %12.0f %13s us\n' "$c" "$(median "${rps[$c]}")" "$(median "${cpu[$c]}")"
done
ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN {printf "%.3f", a/b}'; }
echo
echo "new/old infer req/s: $(ratio "${rps[new-infer]}" "${rps[old-infer]}"); new/old infer CPU per request: $(ratio "${cpu[new-infer]}" "${cpu[old-infer]}")"
echo "new/old health req/s: $(ratio "${rps[new-health]}" "${rps[old-health]}"); new/old health CPU per request: $(ratio "${cpu[new-health]}" "${cpu[old-health]}")"
# Each round measures both builds back to back, so its new/old ratio cancels what the machine did
# in that round; the geometric mean of those ratios is the fairer summary on a shared machine.
geomean() { # old-list new-list
  paste <(printf '%s\n' $1) <(printf '%s\n' $2) | awk '{s += log($2 / $1); n++} END {printf "%.3f", exp(s / n)}'
}
echo "per-round new/old, geometric mean: infer req/s $(geomean "${rps[old-infer]}" "${rps[new-infer]}"), infer CPU per request $(geomean "${cpu[old-infer]}" "${cpu[new-infer]}"); health req/s $(geomean "${rps[old-health]}" "${rps[new-health]}"), health CPU per request $(geomean "${cpu[old-health]}" "${cpu[new-health]}")"
echo "spread of infer req/s over rounds: old $(printf '%s\n' ${rps[old-infer]} | sort -g | head -1)-$(printf '%s\n' ${rps[old-infer]} | sort -g | tail -1), new $(printf '%s\n' ${rps[new-infer]} | sort -g | head -1)-$(printf '%s\n' ${rps[new-infer]} | sort -g | tail -1)"
echo "(medians of $rounds alternating rounds, ${duration}s each, $connections connections, wrk -t1; $pinning)"
echo "reproduce: tools/bench-serving-ab.sh $rev $duration $connections $rounds"
exit "$bad"
