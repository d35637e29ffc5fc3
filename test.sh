#!/usr/bin/env bash
# Installs what the tests need and runs them (unit and end-to-end).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
swift build --build-tests
swift test --skip-build
