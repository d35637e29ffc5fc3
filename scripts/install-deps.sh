#!/usr/bin/env bash
# Installs the Debian packages scopelua needs to build, test and benchmark; runs
# `apt-get update` first only when something is missing. Safe to run repeatedly.
set -euo pipefail

packages=(
  pkg-config
  liblua5.4-dev      # the embedded Lua 5.4 (headers + library, found by pkg-config)
  libsqlite3-dev     # SQLite's C library (the sql module)
  lua-cjson          # the plain-Lua baseline; tests compare scopelua's json with it
  libedit-dev        # line editing in the REPL
  lua5.4             # stock lua, for the parity tests and the baselines
  lua-sql-sqlite3    # the plain-Lua baseline's database driver
  python3            # benchmark driver and the Python baselines
  tmux               # drives the REPL as a user would, in end-to-end tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scopelua: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
