#!/usr/bin/env bash
# CI stage: the single binary runs without Swift. Installs scopelua with
# scripts/install.sh into a temporary prefix, then checks the installed binary:
#   1. ldd: no Swift library (libswift*, Foundation, dispatch), nothing from the
#      toolchain's directory, nothing missing;
#   2. in a mount namespace where the Swift toolchain's directory is an empty tmpfs (a
#      Debian machine without Swift), with LD_LIBRARY_PATH and SCOPELUA_STDLIB unset and
#      PATH=/usr/bin:/bin: `scopelua --version`, a module from the installed stdlib
#      (found relative to the binary), and every example script with the checks of
#      scripts/ci-scripts.sh;
#   3. the controls, so that step 2 can fail: in the same namespace a dynamically linked
#      Swift program (built here with swiftc; and .build/release/scopelua when the release
#      stage built it) must fail to start. LD_LIBRARY_PATH alone would prove nothing: a
#      dynamic Swift binary finds the toolchain through its RUNPATH.
# Needs `unshare` (util-linux) and root, or unprivileged user namespaces.
#   scripts/ci-static.sh [NAME...]    (default: every example; NAME as in scripts/NAME.lua)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# --- inside the namespace (the script runs itself under unshare) ----------------------
if [ "${1:-}" = --inside ]; then
  shift
  prefix=$1 hide=$2 libdir=$3 work=$4; shift 4
  mount -t tmpfs -o size=1m,mode=755 scopelua-no-swift "$hide" || { echo "FAIL  cannot mount a tmpfs over $hide"; exit 1; }
  # Is Swift really gone? Else everything below would pass for the wrong reason.
  if [ -e "$libdir/libswiftCore.so" ] || PATH=/usr/bin:/bin command -v swift >/dev/null; then
    echo "FAIL  the Swift toolchain is still visible in the namespace ($libdir)"; exit 1
  fi
  echo "PASS  $hide is hidden: no $libdir/libswiftCore.so, no swift on PATH"
  without_swift() { env -u LD_LIBRARY_PATH -u SCOPELUA_STDLIB PATH=/usr/bin:/bin "$@"; }
  failed=0

  # The controls: a dynamically linked Swift program cannot start here.
  for control in "$work/hello-dynamic" "$root/.build/release/scopelua"; do
    [ -x "$control" ] || continue
    ldd "$control" 2>/dev/null | grep -q libswiftCore || continue  # not dynamic: no control
    if out=$(without_swift "$control" --version 2>&1); then
      echo "FAIL  control: the dynamically linked $control ran without the toolchain: $out"; failed=1
    else
      echo "PASS  control: the dynamically linked $control cannot start: $(head -n 1 <<<"$out")"
    fi
  done

  bin="$prefix/bin/scopelua"
  version=$(without_swift "$bin" --version 2>&1)
  if [[ "$version" =~ ^scopelua\ [0-9]+\.[0-9]+\.[0-9]+\ \(Lua\ 5\.4\.[0-9]+,\ SQLite\ 3\.[0-9.]+,\ hiredis\ 0\.14\.[0-9]+\)$ ]]; then
    echo "PASS  $version"
  else
    echo "FAIL  scopelua --version: $version"; failed=1
  fi

  probe=$(cd "$work" && without_swift "$bin" -e 'print((require "ci_static_probe"))' 2>&1)
  if [ "$probe" = "from $prefix/share/scopelua/stdlib" ]; then
    echo "PASS  require finds the installed stdlib: $probe"
  else
    echo "FAIL  require 'ci_static_probe' from the installed stdlib: $probe"; failed=1
  fi

  source scripts/ci-scripts.sh
  run_scopelua() { without_swift "$bin" "$@"; }
  if [ $# -gt 0 ]; then names=("$@"); else names=("${example_names[@]}"); fi
  run_named "${names[@]}" || failed=1
  exit $failed
fi

# --- outside: install, check the linking, enter the namespace -------------------------
command -v swift >/dev/null || { echo "FAIL  swift is not on PATH (needed to build)"; exit 1; }
command -v unshare >/dev/null || { echo "FAIL  unshare is not installed (util-linux)"; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/scopelua-static.XXXXXX")
prefix="$work/prefix"

started=$SECONDS
scripts/install.sh --prefix "$prefix" || { echo "FAIL  scripts/install.sh --prefix $prefix"; exit 1; }
echo "      installed in $((SECONDS - started)) s (build included)"
bin="$prefix/bin/scopelua"

# The toolchain: hide its whole directory (/opt/swift) when it has one of its own, else
# (a toolchain in /usr) only its runtime libraries.
toolchain=$(dirname "$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")")
libdir="$toolchain/usr/lib/swift/linux"
[ -e "$libdir/libswiftCore.so" ] || { echo "FAIL  no libswiftCore.so in $libdir: where is the Swift runtime?"; exit 1; }
case $toolchain in /|/usr|/usr/local) hide=$libdir ;; *) hide=$toolchain ;; esac

failed=0
links=$(ldd "$bin")
if grep -E 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|not found' <<<"$links" \
   || grep -F " $toolchain/" <<<"$links"; then
  echo "FAIL  ldd $bin: loads Swift libraries or misses one (above)"; failed=1
else
  echo "PASS  ldd: no Swift library, nothing from $toolchain, nothing missing ($(grep -c '=>' <<<"$links") libraries)"
fi

# A module in the installed stdlib, to see the binary find it there.
echo "return 'from $prefix/share/scopelua/stdlib'" >"$prefix/share/scopelua/stdlib/ci_static_probe.lua"
# The control: the smallest dynamically linked Swift program.
echo 'print("hello")' >"$work/hello.swift"
swiftc -o "$work/hello-dynamic" "$work/hello.swift" 2>/dev/null \
  || { echo "FAIL  swiftc could not build the control program"; failed=1; }

if [ "$(id -u)" -eq 0 ]; then namespace=(unshare --mount --propagation private)
else namespace=(unshare --mount --propagation private --map-root-user); fi
"${namespace[@]}" bash "$0" --inside "$prefix" "$hide" "$libdir" "$work" "$@" || failed=1

rm -f "$prefix/share/scopelua/stdlib/ci_static_probe.lua"
[ $failed -eq 0 ] && rm -rf "$work"
exit $failed
