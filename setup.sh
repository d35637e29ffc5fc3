#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine with Swift, builds scopelua, and runs the
# main job: the analytics pipeline over the bundled sample events, with its report.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
swift build -c release
mkdir -p out
.build/release/scopelua run scripts/analytics.lua \
  --input scripts/data/events.jsonl --output out/kept.jsonl --dead-letter out/dead.jsonl --report
echo "kept events: out/kept.jsonl, log: out/events.log, database: out/analytics.db"
