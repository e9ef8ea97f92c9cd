#!/usr/bin/env bash
# The proof harness (issue 19): a Kaa cluster under load with nodes killed, paused, joining,
# leaving, upgraded (and, in network namespaces, partitioned and on a lossy network), then
# checked call by call. The work is done by tools/proof.py (Python 3, standard library only);
# docs/proof.md says what it checks.
# Usage: tools/proof.sh [--short] [--nodes N] [--models M] [--seed S] [--duration SECONDS]
#                       [--rate CALLS_PER_S] [--kaa PATH] [--mode auto|loopback|namespaces] [--keep]
#        tools/proof.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "proof: python3 is needed (tools/install-deps.sh installs it)" >&2; exit 1; }
exec python3 tools/proof.py "$@"
