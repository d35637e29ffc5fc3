# Sourced by the CI stages that run scopelua scripts outside the Swift test suite
# (scripts/ci-release.sh, scripts/ci-asan.sh, scripts/valgrind-scripts.sh):
#   example NAME      runs scripts/NAME.lua the way Tests/ScopeLuaTests/ExampleScriptTests.swift
#                     runs it and checks its exit status and outputs, so that the release
#                     build (and the release build under valgrind) is held to what the
#                     debug suite checks;
#   error_path NAME   runs Tests/valgrind/NAME.lua (scripts that end in errors, break out of
#                     loops, leak handles, ... for memory checkers) and checks its exit
#                     status (0, or what its `-- exit: N` line says) and, for exit 0, that
#                     it printed "ok" last (it ran to the end).
#
# The caller defines `run_scopelua ARGS...` (how to start scopelua: the binary itself or
# under valgrind) and $work (a directory). Each run has a fresh directory $dir (the
# working directory of the run), prints one PASS/FAIL line, and returns non-zero on a
# failure. Optional hooks: `extra_check` runs after a script's own checks (and may add
# to `failures`, e.g. memcheck's verdict), `on_failure` prints more when it failed.

root=${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
events="$root/scripts/data/events.jsonl"

# The example scripts, in the order they run. A script in scripts/ missing here fails
# the stage (see check_example_list): a new example is run or explicitly left out.
example_names=(tour db_cleanup analytics analytics_workers log_events db_stage timing nested)

check_example_list() {
  local f name missing=0
  for f in "$root"/scripts/*.lua; do
    name=$(basename "$f" .lua)
    if [[ " ${example_names[*]} " != *" $name "* ]]; then
      echo "FAIL  scripts/$name.lua is not in scripts/ci-scripts.sh: say how CI runs it and what it must print"
      missing=1
    fi
  done
  return $missing
}

# expect DESCRIPTION COMMAND...: records a failed check (does not stop the example).
expect() {
  local what=$1; shift
  if ! "$@"; then failures+=("$what"); fi
}
contains() { grep -qF -- "$2" "$1"; }
lines_of() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
sql_count() { sqlite3 "$1" "$2" 2>&1; }

example_tour() {
  local status
  run_scopelua run --report "$root/scripts/tour.lua" "$events" "$dir/tour.log" >"$dir/stdout" 2>"$dir/stderr"
  status=$?
  expect "exit 0 (got $status)" [ "$status" -eq 0 ]
  expect "stdout starts with '2000 lines, '" grep -q '^2000 lines, ' "$dir/stdout"
  expect "tour.log ends with 2000<TAB>81 and done" [ "$(tail -n 2 "$dir/tour.log" 2>/dev/null)" = "$(printf '2000\t81\ndone')" ]
  expect "report says leaked 0" contains "$dir/stderr" "leaked 0"
}

example_db_cleanup() {
  local status
  run_scopelua run "$root/scripts/db_cleanup.lua" "$events" "$dir/events.db" >"$dir/stdout" 2>"$dir/stderr"
  status=$?
  expect "exit 0 (got $status)" [ "$status" -eq 0 ]
  expect "stdout is the summary line" [ "$(cat "$dir/stdout")" = "stored 1500 events (500 in rolled-back batches); table has 1500 rows" ]
  expect "stderr starts with 'batch rolled back: '" grep -q '^batch rolled back: ' "$dir/stderr"
  expect "the rolled-back batch left no rows" [ "$(sql_count "$dir/events.db" 'SELECT count(*) FROM events WHERE id BETWEEN 1000 AND 1499')" = 0 ]
}

# Pipelines run with their working directory in $dir, like the tests.
pipeline_example() {
  local script=$1 status; shift
  mkdir -p "$dir/out"
  (cd "$dir" && run_scopelua run "$root/scripts/$script" --input "$events" --report "$@") >"$dir/stdout" 2>"$dir/stderr"
  status=$?
  expect "exit 0 (got $status)" [ "$status" -eq 0 ]
}

example_analytics() {
  ANALYTICS_OUT="$dir" pipeline_example analytics.lua --output "$dir/kept.jsonl"
  expect "analytics totals" contains "$dir/stderr" "seen=2000 kept=1327 click=618 buy=709"
  expect "event accounting" contains "$dir/stderr" "read 2000  emitted 1327  filtered 673  skipped 0  dead-lettered 0  rejected 0"
  expect "kept.jsonl has 1327 lines" [ "$(lines_of "$dir/kept.jsonl")" -eq 1327 ]
  expect "events.log has 1327 lines" [ "$(lines_of "$dir/events.log")" -eq 1327 ]
  expect "analytics.db has 1327 rows" [ "$(sql_count "$dir/analytics.db" 'SELECT count(*) FROM events')" = 1327 ]
}

# analytics.lua with 2 workers: each worker its own log and database, the run's counts
# and output as with one.
example_analytics_workers() {
  ANALYTICS_OUT="$dir" pipeline_example analytics.lua --output "$dir/kept.jsonl" --workers 2
  expect "event accounting" contains "$dir/stderr" "read 2000  emitted 1327  filtered 673  skipped 0  dead-lettered 0  rejected 0"
  expect "kept.jsonl has 1327 lines" [ "$(lines_of "$dir/kept.jsonl")" -eq 1327 ]
  expect "kept.jsonl is in input order" [ "$(grep -o '"id":[0-9]*' "$dir/kept.jsonl" | cut -d: -f2 | sort -n -c 2>&1)" = "" ]
  expect "the two logs have 1327 lines" [ $(($(lines_of "$dir/events.log") + $(lines_of "$dir/events-2.log"))) -eq 1327 ]
  expect "the two databases have 1327 rows" [ $(($(sql_count "$dir/analytics.db" 'SELECT count(*) FROM events') + $(sql_count "$dir/analytics-2.db" 'SELECT count(*) FROM events'))) -eq 1327 ]
  expect "each worker counted" [ "$(grep -c '^worker [12]: seen=' "$dir/stderr")" -eq 2 ]
  expect "no descriptor left open" grep -qE "descriptors open ([0-9]+) before the run, \1 after" "$dir/stderr"
}

example_log_events() {
  LOG_PATH="$dir/log.jsonl" pipeline_example log_events.lua --output none
  expect "log.jsonl has 2001 lines" [ "$(lines_of "$dir/log.jsonl")" -eq 2001 ]
  expect "log.jsonl ends with '# done'" [ "$(tail -n 1 "$dir/log.jsonl" 2>/dev/null)" = "# done" ]
}

example_db_stage() {
  DB_PATH="$dir/db.sqlite" pipeline_example db_stage.lua --output none
  expect "db.sqlite has 2000 rows" [ "$(sql_count "$dir/db.sqlite" 'SELECT count(*) FROM events')" = 2000 ]
  expect "report says leaked 0" contains "$dir/stderr" "leaked 0"
}

example_timing() {
  pipeline_example timing.lua --output none
  expect "score timed 2000 times" contains "$dir/stderr" "             score           2000 "
  expect "buy_lookup timed 709 times" contains "$dir/stderr" "             buy_lookup       709 "
}

example_nested() {
  pipeline_example nested.lua --output none
  local expected
  expected=$(printf '%s\n' "open  run/outer/parse" "open  run/outer/checks/validate" "open  run/outer/checks/enrich" \
    "open  run/outer/store" "close run/outer/store" "close run/outer/checks/enrich" "close run/outer/checks/validate" \
    "close run/outer/parse")
  expect "stages open in order and close in reverse" [ "$(grep -E '^(open|close)' "$dir/stderr")" = "$expected" ]
}

# The scripts in Tests/valgrind/.
error_path_names=()
for f in "$root"/Tests/valgrind/*.lua; do error_path_names+=("$(basename "$f" .lua)"); done

run_error_path() {
  local script="$root/Tests/valgrind/$1.lua" expected status
  expected=$(sed -n 's/^-- exit: \([0-9]*\)$/\1/p' "$script" | head -n 1)
  expected=${expected:-0}
  (cd "$dir" && run_scopelua run "$script") >"$dir/stdout" 2>"$dir/stderr"
  status=$?
  expect "exit $expected (got $status)" [ "$status" -eq "$expected" ]
  if [ "$expected" -eq 0 ]; then
    expect "prints ok at the end" [ "$(tail -n 1 "$dir/stdout")" = "ok" ]
  fi
}

# checked TITLE NAME COMMAND...: runs COMMAND in a fresh $dir under $work with the
# checks and hooks, prints PASS/FAIL.
checked() {
  local title=$1 name=$2 started=$SECONDS
  shift 2
  dir="$work/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  failures=()
  "$@"
  if declare -F extra_check >/dev/null; then extra_check; fi
  if [ ${#failures[@]} -eq 0 ]; then
    echo "PASS  $title ($((SECONDS - started))s)"
    return 0
  fi
  echo "FAIL  $title: $(IFS=';'; echo "${failures[*]}")"
  echo "      stdout (last lines):"; tail -n 5 "$dir/stdout" | sed 's/^/        /'
  echo "      stderr (last lines):"; tail -n 12 "$dir/stderr" | sed 's/^/        /'
  if declare -F on_failure >/dev/null; then on_failure; fi
  return 1
}

example() { checked "scripts/$1.lua" "$1" "example_$1"; }
error_path() { checked "Tests/valgrind/$1.lua" "$1" run_error_path "$1"; }

# run_named NAME...: runs each name as an example or an error-path script; prints a
# count and returns non-zero when any failed.
run_named() {
  local name passed=0 failed=0
  for name in "$@"; do
    if [[ " ${example_names[*]} " == *" $name "* ]]; then
      example "$name" && passed=$((passed + 1)) || failed=$((failed + 1))
    elif [ -f "$root/Tests/valgrind/$name.lua" ]; then
      error_path "$name" && passed=$((passed + 1)) || failed=$((failed + 1))
    else
      echo "FAIL  no example or Tests/valgrind script named '$name'"
      failed=$((failed + 1))
    fi
  done
  echo "scripts: $passed passed, $failed failed"
  [ $failed -eq 0 ]
}
