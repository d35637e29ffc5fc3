#!/usr/bin/env bash
# CI stage: the whole test suite again, built with AddressSanitizer and
# UndefinedBehaviorSanitizer in its own scratch path (.build-asan). The end-to-end tests
# start the instrumented scopelua executable, so child processes are checked as well.
# Then the error-path scripts of Tests/valgrind/ run with that executable too.
#   scripts/ci-asan.sh [swift test options, e.g. --filter SQLTests]
#   SCOPELUA_ASAN_SCRIPTS_ONLY=1 scripts/ci-asan.sh [NAME...]   (only Tests/valgrind scripts)
#
# UBSan: swiftc on Linux rejects -sanitize=undefined, so `swift build
# --sanitize=undefined` cannot build the Swift targets; the C targets (CScopeLua, where
# the bridge, the allocator, the timer fast path and the JSON codec live) get
# -fsanitize=undefined through -Xcc, and ASan's runtime carries UBSan's handlers.
# Reports halt the process that hits them (halt_on_error=1).
#
# Every report goes to a log file under .build-asan/sanitizer-logs as well: a child
# process whose exit status a test does not check cannot hide one. Any file there fails
# the stage.
#
# Leaks: LeakSanitizer stays on, for the test process and for every scopelua child;
# Tests/asan/lsan.supp suppresses only leaks inside XCTest and Foundation (see there).
#
# SCOPELUA_ASAN=1 tells the tests they run under ASan: a memory-growth check that ASan's
# quarantine of freed blocks makes meaningless is left out (BridgeTests).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/ci-scripts.sh

# ld.gold warns about every ASan helper symbol it cannot export: hundreds of lines of noise.
swift build --build-tests --sanitize=address -Xcc -fsanitize=undefined --scratch-path .build-asan 2>&1 \
  | { grep -v "warning: Cannot export local symbol '__asan" || true; }
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

logs="$root/.build-asan/sanitizer-logs"
rm -rf "$logs" && mkdir -p "$logs"
export SCOPELUA_ASAN=1
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:log_path=$logs/report"
export LSAN_OPTIONS="suppressions=$root/Tests/asan/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/report"

status=0
if [ -z "${SCOPELUA_ASAN_SCRIPTS_ONLY:-}" ]; then
  swift test --skip-build --scratch-path .build-asan "$@" || status=1
  set -- # the options were swift test's
fi

reports=("$logs"/*)
if [ -e "${reports[0]}" ]; then
  echo "FAIL  sanitizer reports from the test suite (${#reports[@]} files in $logs):"
  for f in "${reports[@]}"; do
    echo "---- $f"
    head -n 60 "$f"
  done
  status=1
fi

# The error-path scripts, each with its own log files.
echo "error-path scripts with the instrumented scopelua:"
bin="$root/.build-asan/debug/scopelua"
work=$(mktemp -d "${TMPDIR:-/tmp}/scopelua-asan.XXXXXX")
run_scopelua() {
  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:log_path=$dir/sanitizer" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$dir/sanitizer" \
    "$bin" "$@"
}
extra_check() {
  local f
  for f in "$dir"/sanitizer.*; do
    [ -e "$f" ] && failures+=("$(grep -m 1 -E "ERROR|runtime error" "$f" | sed 's/^==[0-9]*==//')")
  done
}
on_failure() {
  local f
  for f in "$dir"/sanitizer.*; do
    [ -e "$f" ] && { echo "      $f:"; head -n 25 "$f" | sed 's/^/        /'; }
  done
}
if [ $# -gt 0 ]; then names=("$@"); else names=("${error_path_names[@]}"); fi
run_named "${names[@]}" || status=1
[ $status -eq 0 ] && rm -rf "$work"
exit $status
