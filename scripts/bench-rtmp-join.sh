#!/usr/bin/env bash
# How long a WebRTC viewer of an RTMP room waits for its first picture, by
# the encoder's keyframe interval. An RTMP encoder cannot be asked for a
# keyframe, so a viewer joining mid-group waits for the next one. In a
# network namespace of its own (root needed; aiortc gathers no loopback
# candidates): a node with --rtmp-listen, FFmpeg pushing 320x240 testsrc2
# at 30 fps with a keyframe every GOP frames, then VIEWERS aiortc viewers
# one after another, each joining at a random point of the group. Prints
# the time from each viewer's offer to its first decoded frame, and the
# node's CPU per second of ingest.
# Usage: scripts/bench-rtmp-join.sh [VIEWERS] [GOP frames ...]
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-10}
shift 1 2>/dev/null || true
GOPS=("${@:-60 120}")
[ ${#GOPS[@]} -eq 1 ] && read -r -a GOPS <<<"${GOPS[0]}"
SFU=target/release/sfu
PY=.venv/bin/python
[ -x "$SFU" ] || { echo "bench-rtmp-join: build first: cargo build --release -p sfu" >&2; exit 1; }
[ -x "$PY" ] || { echo "bench-rtmp-join: run scripts/setup.sh (the aiortc venv)" >&2; exit 1; }
NS="wave-rtmpjoin-$$"
DIR=$(mktemp -d)
ip netns add "$NS"
cleanup() { ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
in_ns ip link add wv0 type veth peer name wv1
in_ns ip addr add 198.18.0.1/24 dev wv0
in_ns ip addr add 198.18.0.2/24 dev wv1
in_ns ip link set wv0 up
in_ns ip link set wv1 up
NODE=198.18.0.1
SECRET=bench
in_ns "$SFU" serve --http "$NODE:8080" --media-ip "$NODE" --workers 1 --auth-secret "$SECRET" \
  --rtmp-listen "$NODE:1935" --no-hls >"$DIR/node.out" 2>"$DIR/node.log" &
disown
sleep 1
PID=$(in_ns ip netns pids "$NS" | head -1)
token() { "$SFU" token --secret "$SECRET" --room "$ROOM" --identity "$1" "$2"; }
for GOP in "${GOPS[@]}"; do
  ROOM="join$GOP"
  # `ip netns exec` execs FFmpeg: $! is FFmpeg's pid.
  ip netns exec "$NS" ffmpeg -hide_banner -loglevel error -nostdin -re -f lavfi -i testsrc2=size=320x240:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=44100 -c:v libx264 -preset veryfast -tune zerolatency \
    -pix_fmt yuv420p -g "$GOP" -keyint_min "$GOP" -sc_threshold 0 -bf 0 -c:a aac -b:a 96k \
    -f flv "rtmp://$NODE:1935/live/$ROOM?token=$(token enc --publish)" >/dev/null 2>&1 &
  FF=$!
  sleep 3
  kill -0 "$FF" 2>/dev/null || { echo "bench-rtmp-join: FFmpeg did not publish" >&2; exit 1; }
  CPU0=$(awk '{print $14+$15}' "/proc/$PID/stat"); T0=$(date +%s.%N)
  TIMES=()
  for _ in $(seq "$VIEWERS"); do
    # A random point of the group: up to one GOP (30 fps) of waiting first.
    MS=$((RANDOM * GOP * 1000 / 30 / 32768))
    sleep "$(printf '%d.%03d' $((MS / 1000)) $((MS % 1000)))"
    OUT=$(in_ns "$PY" sfu/tests/interop/wave_interop.py aiortc-watch --url "http://$NODE:8080/whep/$ROOM" \
      --token "$(token viewer --subscribe)" --seconds 5 | tail -1)
    TIMES+=("$(echo "$OUT" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["first_frame_ms"] or -1)')")
  done
  CPU1=$(awk '{print $14+$15}' "/proc/$PID/stat"); T1=$(date +%s.%N)
  kill "$FF" 2>/dev/null || true
  wait "$FF" 2>/dev/null || true
  printf '%s\n' "${TIMES[@]}" | sort -n | awk -v gop="$GOP" -v cpu="$((CPU1 - CPU0))" -v secs="$(echo "$T1 - $T0" | bc)" '
    { t[NR] = $1; sum += $1 }
    END {
      printf "GOP %d frames (%.1f s): %d viewers, first frame after offer ms: min %d p50 %d mean %d max %d; node CPU %.1f %% of a core (ingest + viewers)\n",
        gop, gop / 30, NR, t[1], t[int((NR + 1) / 2)], sum / NR, t[NR], cpu / secs
    }'
  sleep 2
done
