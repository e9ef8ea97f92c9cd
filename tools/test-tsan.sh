#!/usr/bin/env bash
# Runs the concurrency-heavy suites under ThreadSanitizer (CI runs it after tools/test.sh).
# Its own build folder (.build-tsan): every module, the node included, is built with the
# sanitizer, so the node processes the tests start are checked too (a race makes one exit 66).
# A race reported in the test process fails the run.
# Usage: tools/test-tsan.sh [extra `swift test` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/python-env.sh test >/dev/null
swift build --build-tests --sanitize=thread --scratch-path .build-tsan
suites="ModelServerTests|CallCompletionTests|AdmissionTests|SnapshotAPITests|FrameChannelTests|PeerPlaneTests|HTTPServerTests"
suites+="|StreamingBodyTests|HTTPClientTests|LoopTests|HostResolverTests|NodeProcessTests|AccessControlTests|GossipLiveTests"
suites+="|SnapshotTransferTests/aNodeFetches|HostileRequestTests|ReplicationLiveTests"
log=$(mktemp /tmp/kaa-tsan.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
# The replication test with 30 snapshots besides the samples: enough to move copies both ways.
KAA_LIVE_SNAPSHOTS=${KAA_LIVE_SNAPSHOTS:-30} TSAN_OPTIONS="halt_on_error=0 exitcode=66 ${TSAN_OPTIONS:-}" \
  swift test --skip-build --sanitize=thread --scratch-path .build-tsan --filter "$suites" "$@" 2>&1 | tee "$log" || status=$?
races=$(grep -c "WARNING: ThreadSanitizer" "$log" || true)
if [ "$races" != 0 ]; then
  echo "test-tsan: ThreadSanitizer reported $races race(s); see above" >&2
  exit 1
fi
exit "$status"
