#!/usr/bin/env bash
# Coverage-guided fuzzing of the JSON codec (json.decode / json.encode) and of the
# partition-key scanner against it (jsonkey.c), one target (Fuzz/json_fuzz.c), with
# libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer, for a bounded time.
#
#   scripts/fuzz-json.sh [seconds]      (default 60)
#
# Builds the target into .build-fuzz/ and runs it on a copy of the committed seed corpus
# (Fuzz/corpus/json/; the copy collects what the run finds, the seeds stay as they are).
# Exits non-zero on any crash, sanitizer report, failed round-trip check, leak, or input
# slower than 10 s (a quadratic path); the reproducer is left in .build-fuzz/ and named
# on stderr. Re-run one with: .build-fuzz/json_fuzz .build-fuzz/crash-...
# CLANG=path overrides the compiler (default: the Swift toolchain's clang, which ships
# the libFuzzer runtime; else Debian's clang, installed when missing).
set -euo pipefail

seconds=${1:-60}
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.build-fuzz"

install() {  # apt-get install the packages given (apt-get update first)
  echo "fuzz-json: installing $*" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

has_fuzzer() {  # whether clang $1 can link a libFuzzer target
  [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
  ls "$("$1" -print-resource-dir)"/lib/*/libclang_rt.fuzzer*.a >/dev/null 2>&1
}

command -v pkg-config >/dev/null 2>&1 && pkg-config --exists lua5.4 || install pkg-config liblua5.4-dev
clang=${CLANG:-}
if [ -z "$clang" ]; then
  for candidate in /opt/swift/usr/bin/clang "$(command -v swift 2>/dev/null | sed 's|/swift$|/clang|')" clang; do
    if [ -n "$candidate" ] && has_fuzzer "$candidate"; then clang=$candidate; break; fi
  done
fi
if [ -z "$clang" ]; then
  install clang libclang-rt-dev
  clang=clang
fi
linker=()
lld=$("$clang" -print-prog-name=ld.lld)
[ -x "$lld" ] && linker=(-fuse-ld=lld)  # the Swift toolchain's default gold warns about ASan's symbols

mkdir -p "$out"
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
"$clang" -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  "${linker[@]}" -I"$root/Sources/CScopeLua/include" $(pkg-config --cflags lua5.4) \
  "$root/Fuzz/json_fuzz.c" "$root/Sources/CScopeLua/jsondecode.c" "$root/Sources/CScopeLua/jsonencode.c" \
  "$root/Sources/CScopeLua/jsonkey.c" \
  $(pkg-config --libs lua5.4) -lm -o "$out/json_fuzz"

rm -rf "$out/corpus"
cp -r "$root/Fuzz/corpus/json" "$out/corpus"
echo "fuzz-json: $seconds s on $(ls "$out/corpus" | wc -l) seeds ($clang)" >&2
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
"$out/json_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
  -dict="$root/Fuzz/json.dict" -artifact_prefix="$out/" -print_final_stats=1 "$out/corpus" || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz-json: FAILED (status $status); reproducer: $(ls -t "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-* 2>/dev/null | head -1)" >&2
  exit 1
fi
echo "fuzz-json: clean" >&2
