#!/usr/bin/env bash
# Installs every Debian package that Kaa's build, tests and benchmarks need.
# Idempotent: runs `apt-get update` at most once, and only when something is missing.
# Usage: tools/install-deps.sh            (as root, or through sudo when available)
set -euo pipefail

packages=(
  pkg-config
  libuv1-dev          # KaaIO: event loop, sockets, timers, signals, thread pool
  libhttp-parser-dev  # KaaIO: HTTP/1.1 request and response parsing
  liblz4-dev lz4      # KaaSnapshot: LZ4 frame archives (lz4 to read them by hand)
  libsqlite3-dev      # node catalog, through GRDB.swift
  wrk nginx-light     # tools/bench-http.sh: load generator and the nginx baseline
  curl procps         # README quick start, tests reading /proc
  libopenblas-serial-dev  # KaaEngine: single-threaded OpenBLAS for large matrix products
  python3 python3-venv  # tools/python-env.sh: test clients (tritonclient) and benchmark baselines, never the node
  libonnx-testdata    # KaaEngine tests: the ONNX backend node tests (/usr/share/libonnx-testdata)
  iproute2 nftables   # tools/proof.sh in network namespaces: ip netns, tc netem, nft partitions
  lintian             # tools/test-package.sh: checks the .deb against Debian policy
  systemd adduser     # tools/test-package.sh: systemd-analyze verify on the unit; the .deb's postinst makes the kaa user
  sqlite3 rsync       # tools/test-package.sh: the backup and restore of docs/operations.md
  chromium chromium-driver  # DashboardLiveTests: the /ui page in headless Chromium, driven by selenium (.venv-test)
  fonts-dejavu-core   # a font for the headless browser's screenshots
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt-get (a second checkout's install-deps) may hold dpkg's lock: wait for it.
lock=(-o DPkg::Lock::Timeout=600)
$sudo apt-get "${lock[@]}" update -qq
$sudo apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# nginx-light's package starts a system nginx on :80; Kaa's benchmark runs its own instance.
if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now nginx >/dev/null 2>&1 || true; fi
$sudo pkill -x nginx 2>/dev/null || true
