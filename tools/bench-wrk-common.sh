# Shared by the benchmarks (tools/bench-http.sh, tools/bench-serving.sh and the cluster ones); sourced, not run.
#
# Pinning on a machine with 2 or more CPUs: wrk runs on CPU 0, each server on CPU 1 (every
# thread of the process), so the load generator never competes with the server it measures.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  pin_client=(taskset -c 0); pin_server=(taskset -c 1); pinning="wrk on CPU 0, each server on CPU 1"
else
  pin_client=(); pin_server=(); pinning="not pinned (fewer than 2 CPUs or no taskset)"
fi

# Makes the work directory $work (named after $1) and the list $pids of processes the script
# starts; on exit every one of them is stopped by pid and the directory removed.
bench_workspace() {
  work=$(mktemp -d "/tmp/kaa-$1.XXXXXX")
  pids=()
  trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
        rm -rf "$work"' EXIT
}

# wrk's latency figures ("812.00us", "2.71ms", "1.02s") in microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} }'; }

# User + system CPU time of process $1, in clock ticks (`tck` per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

# The median of the numbers given as arguments (words).
median() { printf '%s\n' $* | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Writes $1/body.json (one 64-float row of the digits fixture as an Open Inference Protocol
# request) and $1/post.lua (wrk posting it), with the Python at $2.
write_digits_request() {
  local dir=$1 python=$2
  "$python" - "$dir/body.json" <<'PY'
import json, sys
row = json.load(open("Tests/KaaEngineTests/Fixtures/digits-mlp/inputs.json"))["input"]["data"][:64]
body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}
open(sys.argv[1], "w").write(json.dumps(body, separators=(",", ":")))
PY
  cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$dir/body.json", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
}

# For the cluster benchmarks: installs the packages, builds the release `kaa` into $kaa, makes
# the workspace (named after $1) and prints the CPU the figures come from.
bench_cluster_setup() {
  tools/install-deps.sh >/dev/null
  swift build -c release --product kaa >/dev/null
  kaa=$PWD/.build/release/kaa
  bench_workspace "$1"
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs," \
       "$(grep -q avx512f /proc/cpuinfo && echo AVX-512 || echo 'AVX2, no AVX-512')"
}
