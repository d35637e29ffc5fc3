#!/usr/bin/env bash
# Builds scopelua as a single binary, the Swift runtime linked in
# (`swift build -c release --static-swift-stdlib`, in .build-static/ so that it never
# rebuilds the dynamically linked .build/release the other scripts use), and installs it
# with the Lua modules it ships:
#   PREFIX/bin/scopelua                  debug info stripped, symbols kept (backtraces)
#   PREFIX/share/scopelua/stdlib/        found relative to the binary at run time
# The binary runs on Debian without Swift; it links these Debian shared libraries, which
# this script installs when missing (with the packages the build needs):
#   liblua5.4-0 libsqlite3-0 libhiredis0.14 libedit2 libstdc++6 (the Swift runtime's C++ half)
#
#   scripts/install.sh [--prefix DIR]    (default /usr/local)
#
# Safe to run again: the build is incremental, and what it installed is replaced (the
# binary by a rename, so a running scopelua keeps its copy).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [--prefix DIR]

Builds scopelua with the Swift runtime linked in and installs
  DIR/bin/scopelua
  DIR/share/scopelua/stdlib/   (the Lua modules scopelua ships)
DIR defaults to /usr/local. Missing Debian packages (to build: liblua5.4-dev,
libsqlite3-dev, libhiredis-dev, libedit-dev, pkg-config; to run: liblua5.4-0,
libsqlite3-0, libhiredis0.14, libedit2, libstdc++6) are installed with apt-get.
EOF
}

fail() { echo "scopelua install: $*" >&2; exit 1; }

prefix=/usr/local
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || { echo "scopelua install: --prefix needs a directory" >&2; exit 2; }
              prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "scopelua install: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "scopelua install: --prefix needs a directory" >&2; exit 2; }
case $prefix in /*) ;; *) prefix="$PWD/$prefix" ;; esac
prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Before a minute of building: can we write there at all?
existing=$prefix
while [ ! -e "$existing" ]; do existing=$(dirname "$existing"); done
[ -d "$existing" ] && [ -w "$existing" ] \
  || fail "cannot write to $existing (for $prefix): run as root, or choose another --prefix"

runtime_packages=(liblua5.4-0 libsqlite3-0 libhiredis0.14 libedit2 libstdc++6)
build_packages=(pkg-config liblua5.4-dev libsqlite3-dev libhiredis-dev libedit-dev binutils)
scripts/install-deps.sh "${build_packages[@]}" "${runtime_packages[@]}"

command -v swift >/dev/null || fail "swift is not on PATH: building needs the Swift toolchain (running the result does not)"
scratch="$root/.build-static"
echo "scopelua install: building (swift build -c release --static-swift-stdlib --scratch-path .build-static)" >&2
swift build -c release --static-swift-stdlib --scratch-path "$scratch" >&2
built="$scratch/release/scopelua"
[ -x "$built" ] || fail "the build did not produce $built"

# The point of the build: nothing from the Swift toolchain is loaded at run time.
toolchain=$(dirname "$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")")
links=$(ldd "$built") || fail "ldd $built failed"
if grep -qE 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|not found' <<<"$links" \
   || { [ "$toolchain" != / ] && grep -qF " $toolchain/" <<<"$links"; }; then
  echo "$links" >&2
  fail "$built still loads Swift libraries or misses one (above): not installing it"
fi

# The binary: to a temporary name in the same directory, then renamed over the old one.
install -d "$prefix/bin" "$prefix/share/scopelua"
objcopy --strip-debug "$built" "$prefix/bin/.scopelua.new"
chmod 755 "$prefix/bin/.scopelua.new"
mv -f "$prefix/bin/.scopelua.new" "$prefix/bin/scopelua"

# The modules: a fresh copy replaces the old one whole (a module removed from stdlib/
# does not linger).
rm -rf "$prefix/share/scopelua/.stdlib.new"
cp -R "$root/stdlib" "$prefix/share/scopelua/.stdlib.new"
rm -rf "$prefix/share/scopelua/stdlib"
mv "$prefix/share/scopelua/.stdlib.new" "$prefix/share/scopelua/stdlib"

version=$("$prefix/bin/scopelua" --version) || fail "the installed $prefix/bin/scopelua does not start"
size=$(du -h "$prefix/bin/scopelua" | cut -f1)
modules=$(find "$prefix/share/scopelua/stdlib" -type f | wc -l)
echo "scopelua install: installed $version"
echo "  $prefix/bin/scopelua ($size, the Swift runtime linked in)"
echo "  $prefix/share/scopelua/stdlib/ ($modules files)"
echo "  shared libraries it loads (Debian packages):"
while read -r name _ path _; do
  case $path in /*) ;; *) continue ;; esac
  package=$(dpkg -S "$path" 2>/dev/null || dpkg -S "/usr$path" 2>/dev/null || echo "?")
  echo "    $name (${package%%:*})"
done <<<"$links"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "  note: $prefix/bin is not on PATH" ;;
esac
