#!/usr/bin/env bash
# CI stage: builds the release configuration (the one users run, setup.sh's; the
# library targets are compiled with -enforce-exclusivity=unchecked there) and runs every
# example script in scripts/ with it, checking the exit status and the outputs that
# Tests/ScopeLuaTests/ExampleScriptTests.swift checks in the debug build.
#   scripts/ci-release.sh [NAME...]    (default: every example; NAME as in scripts/NAME.lua)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/ci-scripts.sh

swift build -c release || exit 1
# The flag is what makes this build differ from the tested debug one: make sure it is
# still there (Package.swift), or this stage would no longer test what users run.
for module in ScopeLuaCore ScopeLuaResources ScopeLua ScopeLuaRepl; do
  if ! grep -- "\"-module-name\",\"$module\"," .build/release.yaml | grep -q -- "-enforce-exclusivity=unchecked"; then
    echo "FAIL  the release build no longer compiles $module with -enforce-exclusivity=unchecked"
    exit 1
  fi
done

bin="$root/.build/release/scopelua"
run_scopelua() { "$bin" "$@"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/scopelua-release.XXXXXX")

failed=0
check_example_list || failed=1
if [ $# -gt 0 ]; then names=("$@"); else names=("${example_names[@]}"); fi
run_named "${names[@]}" || failed=1
[ $failed -eq 0 ] && rm -rf "$work"
exit $failed
