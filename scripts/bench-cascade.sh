#!/usr/bin/env bash
# The relay benchmark: a real nats-server and three release `sfu` nodes on
# this machine (A, B, C, one worker each), the load tester beside them.
#
#   idle     PUBLISHERS publishers on A, one viewer each (the cost the
#            other cases add to)
#   local    PUBLISHERS publishers and VIEWERS viewers each on A
#   cascade  the publishers on A, their viewers spread over B and C (fed
#            from A over QUIC)
#
# Prints, per case, the tester's join p95 and forwarding latency p50/p99,
# then: the added latency per hop (cascade - local), the origin's relay
# frames and bytes per edge per second next to what the publisher sends
# per layer (a layer must cross each link once), and the CPU each node
# spent per relayed frame. Viewers take LAYER (low, mid, high).
# Usage: scripts/bench-cascade.sh [VIEWERS] [SECONDS] [PUBLISHERS] [LAYER]
# (WAVE_SFU=path runs another sfu binary, for a before/after comparison.)
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-200}
SECS=${2:-20}
PUBLISHERS=${3:-10}
LAYER=${4:-high}
BIN=target/release
SFU=${WAVE_SFU:-$BIN/sfu}
[ -x "$SFU" ] && [ -x "$BIN/loadtest" ] || { echo "bench-cascade: build first: cargo build --release -p sfu -p loadtest" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "bench-cascade: nats-server missing: run scripts/setup.sh --test" >&2; exit 1; }
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

NATS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
PIDS+=($!)
disown
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done

declare -A URL PID
for n in a b c; do
  "$SFU" serve --http 127.0.0.1:0 --workers 1 --nats "nats://127.0.0.1:$NATS_PORT" --node-id "$n" \
    --heartbeat 200ms --node-ttl 1s --no-hls >"$DIR/$n.out" 2>"$DIR/$n.log" &
  PID[$n]=$!
  PIDS+=($!)
  disown
done
for n in a b c; do
  for _ in $(seq 100); do [ -s "$DIR/$n.out" ] && break; sleep 0.1; done
  URL[$n]="http://$(head -1 "$DIR/$n.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http"])')"
done
sleep 1.5 # every node in every view

metric() { # node name -> value (0 when absent)
  curl -s "${URL[$1]}/metrics" | awk -v m="$2" '$1 == m { print $2; found=1 } END { if (!found) print 0 }'
}
cpu() { metric "$1" process_cpu_seconds_total; }
relay_cpu() { # node -> CPU seconds of its relay thread (gateway + QUIC)
  local t
  for t in /proc/"${PID[$1]}"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = relay ]; then
      awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "$t/stat"
      return
    fi
  done
  echo 0
}

run() { # case seed urls
  local name=$1 seed=$2 urls=$3
  declare -gA CPU0 CPU1
  declare -gA RCPU0 RCPU1
  for n in a b c; do CPU0[$n]=$(cpu $n); RCPU0[$n]=$(relay_cpu $n); done
  F0=$(metric a wave_relay_frames_sent_total); B0=$(metric a wave_relay_bytes_sent_total)
  R0=$(( $(metric b wave_relay_frames_received_total | cut -d. -f1) + $(metric c wave_relay_frames_received_total | cut -d. -f1) ))
  "$BIN/loadtest" --url "$urls" --seed "$seed" --rate 50 --duration "$SECS" --quiet --json "$DIR/$name.json" \
    fanout --publishers "$PUBLISHERS" --viewers "$4" --layer "$LAYER" >"$DIR/$name.txt" 2>&1 || { cat "$DIR/$name.txt"; exit 1; }
  for n in a b c; do CPU1[$n]=$(cpu $n); RCPU1[$n]=$(relay_cpu $n); done
  F1=$(metric a wave_relay_frames_sent_total); B1=$(metric a wave_relay_bytes_sent_total)
  R1=$(( $(metric b wave_relay_frames_received_total | cut -d. -f1) + $(metric c wave_relay_frames_received_total | cut -d. -f1) ))
  python3 - "$DIR/$name.json" "$name" "$F0" "$F1" "$B0" "$B1" "$R0" "$R1" \
    "${CPU0[a]}" "${CPU1[a]}" "${CPU0[b]}" "${CPU1[b]}" "${CPU0[c]}" "${CPU1[c]}" \
    "${RCPU0[a]}" "${RCPU1[a]}" "${RCPU0[b]}" "${RCPU1[b]}" "${RCPU0[c]}" "${RCPU1[c]}" >>"$DIR/rows" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
name = sys.argv[2]
f0, f1, b0, b1, r0, r1 = (float(x) for x in sys.argv[3:9])
ca0, ca1, cb0, cb1, cc0, cc1 = (float(x) for x in sys.argv[9:15])
ra0, ra1, rb0, rb1, rc0, rc1 = (float(x) for x in sys.argv[15:21])
print(json.dumps({
    "case": name, "joined": r["viewers_joined"], "planned": r["viewers_planned"],
    "join_p95": r["join_ms"]["first_keyframe"]["p95"], "lat_p50": r["latency_ms"]["p50"], "lat_p99": r["latency_ms"]["p99"],
    "loss_pct": r["loss_pct"], "secs": r["duration_secs"],
    "frames_sent": f1 - f0, "bytes_sent": b1 - b0, "frames_received": r1 - r0,
    "cpu_a": ca1 - ca0, "cpu_b": cb1 - cb0, "cpu_c": cc1 - cc0,
    "relay_a": ra1 - ra0, "relay_bc": (rb1 - rb0) + (rc1 - rc0),
}))
EOF
}

run idle 10 "${URL[a]}" 1
sleep 2
run local 11 "${URL[a]}" "$VIEWERS"
sleep 2
run cascade 12 "${URL[a]},${URL[b]},${URL[c]}" "$VIEWERS"

python3 - "$DIR/rows" "$VIEWERS" "$SECS" "$PUBLISHERS" "$LAYER" <<'EOF'
import json, sys
rows = {r["case"]: r for r in map(json.loads, open(sys.argv[1]))}
viewers, secs, pubs, layer = sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
print(f"cascade benchmark: {pubs} publishers x {viewers} viewers of the {layer} layer, {secs:.0f} s measured, 3 nodes x 1 worker + tester on this machine")
print("| case | joined | join p95 ms | latency p50 ms | latency p99 ms | loss % | CPU s A / B / C |")
print("|---|---|---|---|---|---|---|")
for name in ("idle", "local", "cascade"):
    r = rows[name]
    print(f"| {name} | {r['joined']}/{r['planned']} | {r['join_p95']:.0f} | {r['lat_p50']:.2f} | {r['lat_p99']:.2f} | {r['loss_pct']:.3f} | {r['cpu_a']:.2f} / {r['cpu_b']:.2f} / {r['cpu_c']:.2f} |")
l, c, i = rows["local"], rows["cascade"], rows["idle"]
print(f"added latency per hop: p50 {c['lat_p50'] - l['lat_p50']:+.2f} ms, p99 {c['lat_p99'] - l['lat_p99']:+.2f} ms")
print(f"join p95 on an edge vs local: {c['join_p95']:.0f} vs {l['join_p95']:.0f} ms")
span = c["secs"]
if c["frames_sent"] > 0:
    print(f"origin egress: {c['frames_sent'] / span / 2 / int(pubs):.0f} frames/s and {c['bytes_sent'] * 8 / span / 2 / 1000 / int(pubs):.0f} kbit/s per edge per publisher (2 edges), "
          f"{c['frames_received']:.0f} frames received by the edges for {c['frames_sent']:.0f} sent")
    # Per second of each run: the idle run's publisher-only cost is taken
    # off the origin; the local run's viewer forwarding off the edges.
    per_s = lambda r, k: r[k] / r["secs"]
    relay_origin = per_s(c, "cpu_a") - per_s(i, "cpu_a")
    forwarding = per_s(l, "cpu_a") - per_s(i, "cpu_a")
    relay_edges = per_s(c, "cpu_b") + per_s(c, "cpu_c") - forwarding
    fps = c["frames_sent"] / span
    print(f"relay thread CPU per frame: origin {c['relay_a'] / c['frames_sent'] * 1e6:.2f} us per frame sent, "
          f"edges {c['relay_bc'] / c['frames_received'] * 1e6:.2f} us per frame received "
          f"({c['relay_a']:.2f} s and {c['relay_bc']:.2f} s of the relay threads)")
    print(f"whole-process CPU per relayed frame: origin {relay_origin / fps * 1e6:.2f} us per frame sent "
          f"(A's CPU/s with 2 edges minus with its publisher alone), edges {relay_edges / fps * 1e6:.2f} us per frame received "
          f"(B+C's CPU/s minus A's for forwarding to as many viewers locally)")
EOF
