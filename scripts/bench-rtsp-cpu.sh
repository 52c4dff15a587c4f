#!/usr/bin/env bash
# The node's CPU for one RTSP pull and no viewer: a gst-rtsp-server camera
# (sfu/tests/rtsp/camera.py: 1280x720 ball pattern at 30 fps, x264enc
# ultrafast at 1.5 Mbit/s, one keyframe a second, AAC 44.1 kHz stereo) on
# loopback, pulled over TCP with `POST /v1/ingest/{room}`; the node
# passes the H.264 through, transcodes AAC to Opus and, unless --no-hls,
# packages LL-HLS (the AAC passed through). Prints the node's user+system
# CPU over SECONDS, as a share of one core (the camera's own CPU is not
# counted). SFU names another binary (e.g. an older build, to compare).
# Usage: [SFU=path/to/sfu] scripts/bench-rtsp-cpu.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
SFU=${SFU:-target/release/sfu}
[ -x "$SFU" ] || { echo "bench-rtsp-cpu: build first: cargo build --release -p sfu" >&2; exit 1; }
CAM_PORT=18554
HTTP=127.0.0.1:18410
/usr/bin/python3 sfu/tests/rtsp/camera.py "$CAM_PORT" aac 1280x720 30 >/dev/null 2>&1 &
CAM=$!
trap 'kill "$CAM" 2>/dev/null || true' EXIT
sleep 2
for HLS in "--no-hls" ""; do
  # shellcheck disable=SC2086
  "$SFU" serve --http "$HTTP" --workers 1 $HLS >/dev/null 2>&1 &
  NODE=$!
  sleep 1
  CODE=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "{\"url\": \"rtsp://127.0.0.1:$CAM_PORT/cam\", \"transport\": \"tcp\"}" "http://$HTTP/v1/ingest/cpu")
  [ "$CODE" = 201 ] || { echo "bench-rtsp-cpu: POST /v1/ingest/cpu answered $CODE" >&2; kill "$NODE"; exit 1; }
  sleep 4
  grep -q '"playing"' <(curl -s "http://$HTTP/v1/rooms/cpu") ||
    { echo "bench-rtsp-cpu: the pull is not playing: $(curl -s "http://$HTTP/v1/rooms/cpu")" >&2; kill "$NODE"; exit 1; }
  C0=$(awk '{print $14+$15}' "/proc/$NODE/stat"); T0=$(date +%s.%N)
  sleep "$SECS"
  C1=$(awk '{print $14+$15}' "/proc/$NODE/stat"); T1=$(date +%s.%N)
  RATE=$(curl -s "http://$HTTP/v1/rooms" | grep -o '"bitrate_bps":[0-9]*' | head -1 | cut -d: -f2)
  kill "$NODE" 2>/dev/null || true
  wait "$NODE" 2>/dev/null || true
  awk -v c="$((C1 - C0))" -v s="$(echo "$T1 - $T0" | bc)" -v hls="${HLS:-with LL-HLS}" -v r="${RATE:-0}" \
    'BEGIN { printf "RTSP pull, 720p30 H.264 (%.1f Mbit/s measured) + AAC, %s: node CPU %.1f %% of a core\n", r / 1e6, hls, c / s }'
  sleep 1
done
