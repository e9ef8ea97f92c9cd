#!/usr/bin/env bash
# The main job: builds Kaa and runs a local three-node cluster in the foreground until Ctrl-C.
# The nodes find each other by encrypted gossip; the sample snapshots are published once, to the
# first node, the cluster places each on two nodes (`kaa placement` shows where), and the example
# rows of each sample are scored with `kaa predict` through the first node, which sends each call
# to a holder when it holds none of that sample (cluster/samples.sh).
# Usage: tools/run.sh [nodes, default 3] [first HTTP port, default 7070]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
swift build -c release --product kaa
exec cluster/local.sh "${1:-3}" "${2:-7070}"
