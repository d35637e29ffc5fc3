#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine with Swift, builds scopelua, and runs the
# example on the bundled sample events.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
swift build -c release
mkdir -p out
.build/release/scopelua run --report scripts/tour.lua scripts/data/events.jsonl out/tour.log
