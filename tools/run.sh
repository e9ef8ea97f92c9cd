#!/usr/bin/env bash
# The main job: builds Kaa and runs a local three-node cluster in the foreground until Ctrl-C.
# What it shows grows with the project: today the nodes find each other by encrypted gossip
# and answer health checks, the snapshot control API and peer pings.
# Usage: tools/run.sh [nodes, default 3] [first HTTP port, default 7070]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
swift build -c release --product kaa
exec cluster/local.sh "${1:-3}" "${2:-7070}"
