#!/usr/bin/env bash
# What the run board (/metrics, /resources) costs a run: the same pipeline over the same
# events with scopelua built without the board (BASE), with it but no board attached
# (NEW), and with --metrics-listen (NEW + board), in alternating rounds; medians.
#   Benchmarks/board_cost.sh BASE_BINARY NEW_BINARY [ROUNDS] [EVENTS]
# Pipelines: pass (one stage that returns the event: the per-event loop is most of the
# cost) and analytics-1 (scripts/analytics.lua, as bench.py pipeline runs it).
set -euo pipefail
base=$1 new=$2 rounds=${3:-7} n=${4:-200000}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$here/gen_events.py" "$n" > "$tmp/events.jsonl"
printf 'stage "pass" { process = function(ctx, e) return e end }\npipeline "p" { "pass" }\n' > "$tmp/pass.lua"
run() {  # label binary script [extra...]: prints seconds
  local bin=$2 script=$3; shift 3
  local start end
  rm -rf "$tmp/out" && mkdir -p "$tmp/out"
  start=$(date +%s.%N)
  if ! ANALYTICS_OUT="$tmp/out" "$bin" run "$script" --input "$tmp/events.jsonl" --output none --checkpoint-every 1500 "$@" 2>"$tmp/err"; then
    echo "board_cost: $1 failed: $(tail -3 "$tmp/err")" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
for script in "$tmp/pass.lua" "$here/../scripts/analytics.lua"; do
  declare -A times=()
  for ((r = 0; r < rounds; r++)); do
    times[base]+="$(run base "$base" "$script") "
    times[new]+="$(run new "$new" "$script") "
    times[board]+="$(run board "$new" "$script" --metrics-listen 127.0.0.1:0) "
  done
  echo "$(basename "$script"), $n events, $rounds rounds (median, min):"
  for k in base new board; do
    echo "${times[$k]}" | tr ' ' '\n' | grep . | sort -n | awk -v k="$k" '{a[NR]=$1} END {printf "  %-6s %.3fs  (min %.3fs)\n", k, a[int((NR+1)/2)], a[1]}'
  done
  unset times
done
