#!/usr/bin/env bash
# CI stage: valgrind memcheck on the release build, over every example script in
# scripts/ (with the checks of scripts/ci-release.sh) and over the error-path scripts in
# Tests/valgrind/ (errors mid-scope, early loop exits, leaks reclaimed by the collector,
# abandoned coroutines, collections from inside releases and timers, stripped
# metatables, dropped transactions).
#   scripts/valgrind-scripts.sh [NAME...]   NAME: an example (tour, analytics, ...) or a
#                                           script in Tests/valgrind/ (defer_collect, ...);
#                                           default: all of them
#
# A run fails on any memcheck error (invalid read or write, use of uninitialised
# values, invalid free, definitely lost memory), on an exit status other than the
# script's own (0, or what its `-- exit: N` line says), or when a script that should
# exit 0 does not print "ok" as its last line.
#
# valgrind 3.19 cannot read the DWARF 5 that Swift writes, so it runs on a copy of the
# binary made with `objcopy --strip-debug` (the symbol table stays: reports name
# functions). Leaks: only "definitely lost" blocks are errors. The Swift runtime's
# metadata and conformance caches show up as "possibly lost" (pointers into the middle
# of their blocks) and as "still reachable"; neither is counted, and the runtime has
# shown no definitely lost block on these scripts.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/ci-scripts.sh

command -v valgrind >/dev/null || { echo "valgrind is not installed (scripts/install-deps.sh installs it)"; exit 1; }
swift build -c release || exit 1
mkdir -p .build/valgrind
objcopy --strip-debug .build/release/scopelua .build/valgrind/scopelua || exit 1
bin="$root/.build/valgrind/scopelua"
work=$(mktemp -d "${TMPDIR:-/tmp}/scopelua-valgrind.XXXXXX")

vg_status=97  # valgrind's exit status on an error: apart from the scripts' own 0, 1, 2
run_scopelua() {
  valgrind --tool=memcheck --error-exitcode=$vg_status --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --num-callers=30 --log-file="$dir/valgrind.log" "$bin" "$@"
}

# After each run: memcheck's verdict joins the script's own checks.
extra_check() {
  local summary
  summary=$(grep -h "ERROR SUMMARY" "$dir/valgrind.log" 2>/dev/null | tail -n 1)
  if [ -z "$summary" ]; then
    failures+=("no valgrind summary (did it run?)")
  elif [[ "$summary" != *"ERROR SUMMARY: 0 errors"* ]]; then
    failures+=("memcheck: ${summary#*== }")
  fi
}

on_failure() {
  echo "      valgrind (first errors; the whole log: $dir/valgrind.log):"
  grep -v "^==[0-9]*== *$" "$dir/valgrind.log" \
    | grep -A 14 -m 3 -E "Invalid|uninitialised|Mismatched|definitely lost in|Process terminating" \
    | head -n 50 | sed 's/^/        /'
}

failed=0
check_example_list || failed=1
if [ $# -gt 0 ]; then names=("$@"); else names=("${example_names[@]}" "${error_path_names[@]}"); fi
run_named "${names[@]}" || failed=1
[ $failed -eq 0 ] && rm -rf "$work"
exit $failed
