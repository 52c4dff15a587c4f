#!/usr/bin/env bash
# Memory soak: does a node grow with the number of sessions it has served?
#
#   scripts/soak-memory.sh [ROUNDS] [SECONDS-PER-ROUND] [VIEWERS] [CHURN]
#
# Starts one node (embedded defaults, its own HTTP port), then runs ROUNDS
# rounds of `loadtest churn` against it. After each round it waits until no
# session is left and prints the node's idle RSS, the joins so far and the
# node's index gauges (`wave_index_entries`), so a leak shows as a line that
# keeps climbing and allocator retention as one that flattens. Not part of
# the test command (minutes of load on every core); BENCHMARKS.md has a run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
SECS=${2:-90}
VIEWERS=${3:-300}
CHURN=${4:-30}
PORT=${SOAK_PORT:-18480}
URL="http://127.0.0.1:$PORT"

cargo build --quiet --release -p sfu -p loadtest
work=$(mktemp -d)
./target/release/sfu serve --http "127.0.0.1:$PORT" >"$work/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$node/status"; }
metric() { curl -fsS "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
idle() {
  # Sessions end when the tester's peers close; the last ones a moment later.
  for _ in $(seq 200); do
    local p v
    p=$(metric wave_publishers)
    v=$(metric wave_viewers)
    [ "${p:-0}" = 0 ] && [ "${v:-0}" = 0 ] && return 0
    sleep 0.1
  done
  echo "sessions still open after 20 s: publishers=$p viewers=$v" >&2
  return 1
}

idle
sleep 1
echo "round  joins  idle_rss_mb  index_entries"
printf '%5d %6d %12.1f  %s\n' 0 0 "$(echo "$(rss_kb) / 1024" | bc -l)" \
  "$(curl -fsS "$URL/metrics" | awk '/^wave_index_entries/ {s += $2} END {print s + 0}')"
joins=0
for round in $(seq "$ROUNDS"); do
  ./target/release/loadtest churn --quiet --url "$URL" --viewers "$VIEWERS" --churn "$CHURN" \
    --duration "$SECS" --json "$work/round.json" >"$work/round.log" 2>&1 || {
    echo "round $round: loadtest failed:" >&2
    tail -20 "$work/round.log" >&2
    exit 1
  }
  n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["viewers_joined"])' "$work/round.json")
  joins=$((joins + n))
  idle
  sleep 2
  printf '%5d %6d %12.1f  %s\n' "$round" "$joins" "$(echo "$(rss_kb) / 1024" | bc -l)" \
    "$(curl -fsS "$URL/metrics" | awk '/^wave_index_entries/ {s += $2} END {print s + 0}')"
done
curl -fsS "$URL/metrics" | grep '^wave_index_entries' || true
