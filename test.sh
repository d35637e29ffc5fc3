#!/usr/bin/env bash
# Installs what the tests need and runs every check CI runs (.ci/run calls this), stage
# by stage; each stage but the first is a script a developer can also run alone:
#   install-deps   scripts/install-deps.sh        the Debian packages (apt-get, only if missing)
#   debug suite    swift build --build-tests && swift test --skip-build
#   asan+ubsan     scripts/ci-asan.sh             the suite and Tests/valgrind/*.lua under
#                                                 AddressSanitizer + UndefinedBehaviorSanitizer
#   release        scripts/ci-release.sh          the release build runs every example script
#   static binary  scripts/ci-static.sh           scripts/install.sh's single binary runs every
#                                                 example with the Swift toolchain hidden
#   valgrind       scripts/valgrind-scripts.sh    memcheck on the release build: the examples
#                                                 and Tests/valgrind/*.lua
#   json fuzz      scripts/fuzz-json.sh 60        json.decode/json.encode fuzzing, 60 s
# A failing stage does not stop the later ones (one run shows every failure), except
# install-deps. The last line counts the stages; the exit status is 1 if any failed.
# A failed stage's failure lines (failed tests, errors, sanitizer reports) are printed
# again after the table, so the end of the output says what failed.
set -uo pipefail
cd "$(dirname "$0")"

names=() results=() times=()
passed=0 failed=0 skipped=0
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# stage NAME COMMAND...: runs one stage, prints its name and how long it took.
stage() {
  local name=$1 started=$SECONDS result
  shift
  echo
  echo "==> stage: $name ($*)"
  # Each stage's output is also kept, for the failure summary at the end.
  if "$@" 2>&1 | tee "$logs/${#names[@]}.log"; then
    result=passed; passed=$((passed + 1))
  else
    result=FAILED; failed=$((failed + 1))
  fi
  echo "<== stage: $name $result in $((SECONDS - started))s"
  names+=("$name") results+=("$result") times+=("$((SECONDS - started))")
  [ $result = passed ]
}

stage install-deps scripts/install-deps.sh || { echo "stages: 0 passed, 1 failed"; exit 1; }
stage "debug suite" bash -c "swift build --build-tests && swift test --skip-build"
stage "asan+ubsan" scripts/ci-asan.sh
stage release scripts/ci-release.sh
# After release: its dynamically linked .build/release/scopelua is one of the controls.
stage "static binary" scripts/ci-static.sh
stage valgrind scripts/valgrind-scripts.sh
# The fuzz target lands separately; until it does, the stage is skipped (and says so).
if [ -x scripts/fuzz-json.sh ]; then
  stage "json fuzz" scripts/fuzz-json.sh 60
else
  echo
  echo "==> stage: json fuzz skipped (scripts/fuzz-json.sh is not there yet)"
  names+=("json fuzz") results+=(skipped) times+=(0)
  skipped=$((skipped + 1))
fi

echo
echo "stage           result    seconds"
total=0
for i in "${!names[@]}"; do
  printf '%-15s %-9s %7s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
  total=$((total + times[i]))
done
printf '%-15s %-9s %7s\n' total "" "$total"
# What failed, from each failed stage's output: Swift Testing's ✘ lines, XCTest's
# failures, compiler and script errors, sanitizer and valgrind reports.
for i in "${!names[@]}"; do
  [ "${results[$i]}" = FAILED ] || continue
  echo
  echo "== what failed in stage '${names[$i]}':"
  grep -E '✘|error:|: failed|FAIL|Fatal error|ERROR: AddressSanitizer|runtime error:|ERROR SUMMARY: [1-9]|Segmentation fault|Assertion' \
    "$logs/$i.log" | grep -v '✔' | head -40
done
summary="stages: $passed passed, $failed failed"
[ $skipped -gt 0 ] && summary+=", $skipped skipped"
echo "$summary"
[ $failed -eq 0 ]
