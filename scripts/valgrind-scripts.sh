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
source scripts/ci-examples.sh

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

# memcheck_clean: after a run in $dir, records a failure if valgrind reported errors.
memcheck_clean() {
  local summary
  summary=$(grep -h "ERROR SUMMARY" "$dir/valgrind.log" 2>/dev/null | tail -n 1)
  if [ -z "$summary" ]; then
    failures+=("no valgrind summary (did it run?)")
  elif [[ "$summary" != *"ERROR SUMMARY: 0 errors"* ]]; then
    failures+=("memcheck: ${summary#*== }")
  fi
}

show_valgrind_log() {
  echo "      valgrind (first errors, full log in $dir/valgrind.log):"
  grep -v "^==[0-9]*== *$" "$dir/valgrind.log" | grep -A 14 -m 3 -E "Invalid|uninitialised|Mismatched|definitely lost in|Process terminating" \
    | head -n 60 | sed 's/^/        /'
}

# One error-path script from Tests/valgrind/.
error_path() {
  local name=$1 script="$root/Tests/valgrind/$1.lua" started=$SECONDS expected status
  dir="$work/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  failures=()
  expected=$(sed -n 's/^-- exit: \([0-9]*\)$/\1/p' "$script" | head -n 1)
  expected=${expected:-0}
  (cd "$dir" && run_scopelua run "$script") >"$dir/stdout" 2>"$dir/stderr"
  status=$?
  memcheck_clean
  [ "$status" -eq "$expected" ] || failures+=("exit $status, expected $expected")
  if [ "$expected" -eq 0 ] && [ "$(tail -n 1 "$dir/stdout")" != "ok" ]; then
    failures+=("did not print ok at the end")
  fi
  if [ ${#failures[@]} -eq 0 ]; then
    echo "PASS  Tests/valgrind/$name.lua ($((SECONDS - started))s)"
    return 0
  fi
  echo "FAIL  Tests/valgrind/$name.lua: $(IFS=';'; echo "${failures[*]}")"
  echo "      stderr (last lines):"; tail -n 8 "$dir/stderr" | sed 's/^/        /'
  show_valgrind_log
  return 1
}

# The examples run with their usual checks, plus memcheck's verdict.
example_extra_check() { memcheck_clean; }
example_on_failure() { show_valgrind_log; }

error_paths=()
for f in Tests/valgrind/*.lua; do error_paths+=("$(basename "$f" .lua)"); done
if [ $# -gt 0 ]; then names=("$@"); else names=("${example_names[@]}" "${error_paths[@]}"); fi

failed=0
check_example_list || failed=1
passed=0
for name in "${names[@]}"; do
  if [[ " ${example_names[*]} " == *" $name "* ]]; then
    example "$name" && passed=$((passed + 1)) || failed=$((failed + 1))
  elif [ -f "Tests/valgrind/$name.lua" ]; then
    error_path "$name" && passed=$((passed + 1)) || failed=$((failed + 1))
  else
    echo "FAIL  no example or Tests/valgrind script named '$name'"
    failed=$((failed + 1))
  fi
done
echo "valgrind: $passed scripts clean, $failed failed"
[ $failed -eq 0 ] && rm -rf "$work"
[ $failed -eq 0 ]
