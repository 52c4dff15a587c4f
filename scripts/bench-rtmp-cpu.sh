#!/usr/bin/env bash
# The node's CPU for one RTMP ingest and no viewer: FFmpeg pushes 1280x720
# testsrc2 at 30 fps (libx264, ~3 Mbit/s, 2 s GOP) and AAC 44.1 kHz stereo
# on loopback; the node repacketizes the H.264, transcodes AAC to Opus and,
# unless --no-hls, packages LL-HLS (H.264 parts plus the source's AAC, passed
# through). Prints the node's user+system CPU over SECONDS, as a share of one
# core. SFU names another binary (e.g. an older build, to compare).
# Usage: [SFU=path/to/sfu] scripts/bench-rtmp-cpu.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
SFU=${SFU:-target/release/sfu}
[ -x "$SFU" ] || { echo "bench-rtmp-cpu: build first: cargo build --release -p sfu" >&2; exit 1; }
PORT=19400
for HLS in "--no-hls" ""; do
  # shellcheck disable=SC2086
  "$SFU" serve --http 127.0.0.1:18400 --rtmp-listen "127.0.0.1:$PORT" --workers 1 $HLS >/dev/null 2>&1 &
  NODE=$!
  sleep 1
  ffmpeg -hide_banner -loglevel error -nostdin -re -f lavfi -i testsrc2=size=1280x720:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=44100 -ac 2 -c:v libx264 -preset ultrafast -tune zerolatency \
    -b:v 3M -maxrate 3M -bufsize 3M -pix_fmt yuv420p -g 60 -keyint_min 60 -sc_threshold 0 -bf 0 \
    -c:a aac -b:a 128k -t $((SECS + 5)) -f flv "rtmp://127.0.0.1:$PORT/live/cpu" >/dev/null 2>&1 &
  FF=$!
  sleep 3
  C0=$(awk '{print $14+$15}' "/proc/$NODE/stat"); T0=$(date +%s.%N)
  sleep "$SECS"
  C1=$(awk '{print $14+$15}' "/proc/$NODE/stat"); T1=$(date +%s.%N)
  RATE=$(curl -s 127.0.0.1:18400/v1/rooms | grep -o '"bitrate_bps":[0-9]*' | head -1 | cut -d: -f2)
  kill "$FF" "$NODE" 2>/dev/null || true
  wait "$FF" "$NODE" 2>/dev/null || true
  awk -v c="$((C1 - C0))" -v s="$(echo "$T1 - $T0" | bc)" -v hls="${HLS:-with LL-HLS}" -v r="${RATE:-0}" \
    'BEGIN { printf "720p30 H.264 (%.1f Mbit/s measured) + AAC, %s: node CPU %.1f %% of a core\n", r / 1e6, hls, c / s }'
  sleep 1
done
