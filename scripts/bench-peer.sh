#!/usr/bin/env bash
# Same-run comparison against a peer SFU: WAVE and Janus VideoRoom under
# the same load tester, publisher and viewers (`loadtest fanout`, one
# 3-layer simulcast publisher, N low-layer viewers), one after the other
# in one sitting, each server fresh per row. Prints one Markdown table.
#
# Needs Janus (bench only; nothing else needs it): `apt-get install -y janus`
# (Debian 12: janus 1.1.2). Release binaries: `cargo build --release -p sfu -p loadtest`.
#
# Both servers are measured the same way: CPU and memory from /proc/<pid>
# (`--server-pid`), packets per second from what the viewers received
# (`--metrics-path ""`: Janus has no forwarded-packet counter, so WAVE's
# own counter is not used either).
#
# Env: VIEWERS ("100 500 1000"), DURATION (10 s measured), RATE (50 joins/s),
# OUT (target/bench-peer), JANUS_PORT (8088), JANUS_EVENT_LOOPS (2), WAVE_WORKERS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
LT=${LOADTEST:-target/release/loadtest}
SFU=${SFU:-target/release/sfu}
VIEWERS=${VIEWERS:-100 500 1000}
DURATION=${DURATION:-10}
RATE=${RATE:-50}
OUT=${OUT:-target/bench-peer}
JANUS_PORT=${JANUS_PORT:-8088}
WAVE_WORKERS=${WAVE_WORKERS:-1}
export JANUS_PORT
command -v janus >/dev/null || { echo "janus is not installed: apt-get install -y janus" >&2; exit 2; }
for b in "$LT" "$SFU"; do [ -x "$b" ] || { echo "$b missing: cargo build --release -p sfu -p loadtest" >&2; exit 2; }; done
# Janus gathers no loopback candidates: its media (and the tester's, with
# --local-ip) is on this host's own IPv4 address; nothing leaves the host.
ip=${JANUS_ICE_IP:-$(hostname -I | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$')}
export JANUS_ICE_IP=$ip
mkdir -p "$OUT"
common=(--metrics-path "" --duration "$DURATION" --rate "$RATE" --quiet --seed 1)
server_pid=
stop() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; server_pid=; }
trap stop EXIT

for v in $VIEWERS; do
  # WAVE: a release node on port 0; where it listens comes from its ready line.
  rm -f "$OUT/sfu.out"
  "$SFU" serve --http 127.0.0.1:0 --workers "$WAVE_WORKERS" > "$OUT/sfu.out" 2>/dev/null &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$OUT/sfu.out" ] && break; sleep 0.1; done
  url=http://$(head -1 "$OUT/sfu.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http"])')
  echo "WAVE fanout 1×$v ($url, pid $server_pid)" >&2
  "$LT" --url "$url" --server-pid "$server_pid" "${common[@]}" --json "$OUT/wave-$v.json" \
    fanout --viewers "$v" --layer low > "$OUT/wave-$v.txt" 2>&1 || true
  stop

  # Janus: a fresh process and config per row (sessions never time out).
  scripts/janus-config.sh "$OUT/janus-cfg" > /dev/null
  janus -F "$OUT/janus-cfg" -C "$OUT/janus-cfg/janus.jcfg" -o -L "$OUT/janus-$v.log" > /dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$JANUS_PORT") 2>/dev/null && break
    sleep 0.1
  done
  echo "Janus fanout 1×$v (pid $server_pid, media on $ip)" >&2
  "$LT" --target janus --local-ip "$ip" --url "http://127.0.0.1:$JANUS_PORT/janus" --server-pid "$server_pid" \
    "${common[@]}" --json "$OUT/janus-$v.json" fanout --viewers "$v" --layer low > "$OUT/janus-$v.txt" 2>&1 || true
  stop
done

python3 - "$OUT" $VIEWERS <<'PY'
import json, sys
out, counts = sys.argv[1], sys.argv[2:]
def load(name):
    try:
        return json.load(open(f"{out}/{name}.json"))
    except (OSError, ValueError):
        return None
def f(x, d=1):
    return "n/a" if x is None else f"{x:,.{d}f}"
def ratio(a, b):
    return "n/a" if a in (None, 0) or b is None else f"{b / a:.2f}×"
print("| viewers | server | joined | CPU µs / packet | packets/s (received) | cores | KiB / viewer "
      "| join p95 ms | latency p50 / p95 ms | loss % | freezes | on low layer |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in counts:
    rows = {}
    for name, label in (("wave", "WAVE"), ("janus", "Janus")):
        r = load(f"{name}-{n}")
        rows[name] = r
        if r is None:
            print(f"| {n} | {label} | did not run | | | | | | | | | |")
            continue
        s = r["server"]
        print(f"| {n} | {label} | {r['viewers_joined']}/{r['viewers_planned']} "
              f"| {f(s['cpu_us_per_packet'], 2)} | {f(s['packets_per_sec'], 0)} | {f(s['cpu_cores'], 2)} "
              f"| {f(s['mem_per_viewer_kib'])} | {f(r['join_ms']['first_keyframe']['p95'])} "
              f"| {f(r['latency_ms']['p50'], 2)} / {f(r['latency_ms']['p95'], 2)} | {r['loss_pct']:.3f} "
              f"| {r['freezes']} | {r['viewers_on_asked_layer']}/{r['viewers_asking_layer']} |")
    w, j = rows["wave"], rows["janus"]
    if w and j:
        ws, js = w["server"], j["server"]
        print(f"| {n} | Janus ÷ WAVE | | {ratio(ws['cpu_us_per_packet'], js['cpu_us_per_packet'])} | | "
              f"| {ratio(ws['mem_per_viewer_kib'], js['mem_per_viewer_kib'])} "
              f"| {ratio(w['join_ms']['first_keyframe']['p95'], j['join_ms']['first_keyframe']['p95'])} "
              f"| {ratio(w['latency_ms']['p50'], j['latency_ms']['p50'])} / {ratio(w['latency_ms']['p95'], j['latency_ms']['p95'])} | | | |")
PY
