#!/usr/bin/env bash
# Installs the Debian packages scopelua needs to build, test and benchmark; runs
# `apt-get update` first only when something is missing. Safe to run repeatedly.
#   scripts/install-deps.sh [PACKAGE...]   (default: the list below; scripts/install.sh
#                                          passes only what building and running need)
# As root (CI, a fresh container) it calls apt-get directly, sudo or no sudo; as
# another user it needs sudo, and says so plainly when there is none.
set -euo pipefail

packages=(
  pkg-config
  liblua5.4-dev      # the embedded Lua 5.4 (headers + library, found by pkg-config)
  libsqlite3-dev     # SQLite's C library (the sql module)
  libhiredis-dev     # Redis' C client library (the redis module)
  lua-cjson          # the plain-Lua baseline; tests compare scopelua's json with it
  libedit-dev        # line editing in the REPL
  lua5.4             # stock lua, for the parity tests and the baselines
  lua-sql-sqlite3    # the plain-Lua baseline's database driver
  python3            # benchmark driver and the Python baselines
  tmux               # drives the REPL as a user would, in end-to-end tests
  sqlite3            # CI checks the databases the example scripts write
  redis-server       # the redis module's tests start their own servers (not as a service)
  valgrind           # CI runs memcheck on the release build (scripts/valgrind-scripts.sh)
  binutils           # objcopy: the debug-info-free copy valgrind reads
)

if [ $# -gt 0 ]; then packages=("$@"); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "scopelua: installing ${missing[*]}" >&2
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "scopelua: missing packages (${missing[*]}): run this script as root, or install sudo" >&2
    exit 1
  fi
  as_root=(sudo)
fi
# env after sudo: sudo does not pass DEBIAN_FRONTEND on by default.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
