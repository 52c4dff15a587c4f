#!/usr/bin/env bash
# How relayed media fares on a lossy link between nodes. Everything runs in
# a network namespace of its own (root needed): a nats-server, node A (the
# origin, its relay on a fixed port) and node B (the edge), the load tester
# publishing on A and watching on B. netem drops LOSS % of the packets A's
# relay sends (origin -> edge media and control; nothing else is touched),
# by an nftables rule (`numgen random`; this VM's kernel has no netem).
# Prints the viewers' loss after their NACK repair, freezes and latency for
# each loss rate. Usage: scripts/bench-relay-loss.sh [VIEWERS] [SECONDS] [LOSS% ...]
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-20}
SECS=${2:-15}
shift 2 2>/dev/null || true
RATES=("${@:-0 2 5}")
[ ${#RATES[@]} -eq 1 ] && read -r -a RATES <<<"${RATES[0]}"
BIN=target/release
[ -x "$BIN/sfu" ] && [ -x "$BIN/loadtest" ] || { echo "bench-relay-loss: build first: cargo build --release -p sfu -p loadtest" >&2; exit 1; }
NS="wave-loss-$$"
DIR=$(mktemp -d)
ip netns add "$NS"
cleanup() { ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
RELAY_PORT=7411
in_ns nft add table inet wave
in_ns nft add chain inet wave out '{ type filter hook output priority 0; }'

in_ns nats-server -js -a 127.0.0.1 -p 4222 -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
disown
sleep 0.5
in_ns "$BIN/sfu" serve --http 127.0.0.1:8081 --media-ip 127.0.0.1 --workers 1 --nats nats://127.0.0.1:4222 \
  --node-id a --heartbeat 200ms --node-ttl 1s --no-hls --relay-listen "127.0.0.1:$RELAY_PORT" >"$DIR/a.out" 2>"$DIR/a.log" &
disown
in_ns "$BIN/sfu" serve --http 127.0.0.2:8082 --media-ip 127.0.0.2 --workers 1 --nats nats://127.0.0.1:4222 \
  --node-id b --heartbeat 200ms --node-ttl 1s --no-hls >"$DIR/b.out" 2>"$DIR/b.log" &
disown
sleep 2

echo "relay loss benchmark: $VIEWERS full viewers of the low layer on B, publisher on A, ${SECS} s each; nftables drops that share of A's relay packets"
echo "| link loss % | joined | viewer loss after NACK % | freezes > 300 ms | latency p50 / p99 ms |"
echo "|---|---|---|---|---|"
seed=20
for loss in "${RATES[@]}"; do
  in_ns nft flush chain inet wave out
  [ "$loss" = 0 ] || in_ns nft add rule inet wave out udp sport "$RELAY_PORT" numgen random mod 1000 '<' "$((loss * 10))" drop
  seed=$((seed + 1))
  in_ns "$BIN/loadtest" --url "http://127.0.0.1:8081,http://127.0.0.2:8082" --seed "$seed" --rate 20 \
    --duration "$SECS" --full-every 1 --quiet --json "$DIR/r$loss.json" \
    fanout --publishers 1 --viewers "$VIEWERS" --layer low >"$DIR/r$loss.txt" 2>&1 || { cat "$DIR/r$loss.txt"; exit 1; }
  python3 - "$DIR/r$loss.json" "$loss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
freezes = r["freezes"]
print(f"| {sys.argv[2]} | {r['viewers_joined']}/{r['viewers_planned']} | {r['loss_full_pct']:.3f} | {freezes} | "
      f"{r['latency_ms']['p50']:.2f} / {r['latency_ms']['p99']:.2f} |")
PY
done
