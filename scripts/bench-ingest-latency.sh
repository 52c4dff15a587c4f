#!/usr/bin/env bash
# Glass-to-glass latency of an RTMP ingest (issue 18's benchmark): from the
# moment a frame is handed to FFmpeg's encoder to the moment a WHEP viewer
# decodes it and hls.js presents it. scripts/ingest_latency.py draws 1280x720
# I420 frames at 30 fps, each stamped with the wall-clock ms at which it is
# written to FFmpeg's stdin (blocks in the picture); Debian's FFmpeg encodes
# them (libx264 veryfast, -tune zerolatency, 2 s GOP, 2.5 Mbit/s; AAC from a
# sine) and pushes FLV over RTMP to a release `sfu serve --rtmp-listen` on
# loopback. Then, each for SECONDS after WARMUP seconds of play, one after
# the other:
#   - an aiortc viewer (WHEP) reads the stamp of every decoded frame,
#   - Chromium plays /hls/{room}/index.m3u8 with hls.js and reads the stamp of
#     every presented frame (e2e/bench/ingest-latency.mjs),
# and last, without the node, the stamps after a local x264 encode and
# FFmpeg decode (the encoder's share of the figure). Prints p50/p95/max in
# ms, samples and frames whose stamp did not read, and the load average.
# `together` runs the two viewers at the same time (on 2 cores, they then
# wait for each other's decoding).
# Usage: scripts/bench-ingest-latency.sh [SECONDS] [WARMUP] [apart|together]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
WARMUP=${2:-5}
MODE=${3:-apart}
SFU=${WAVE_BIN_DIR:-target/release}/sfu
PY=${WAVE_PYTHON:-.venv/bin/python}
[ -x "$SFU" ] || { echo "bench-ingest-latency: build first: cargo build --release -p sfu" >&2; exit 1; }
[ -x "$PY" ] || { echo "bench-ingest-latency: run scripts/setup.sh (the aiortc venv)" >&2; exit 1; }
[ -d e2e/node_modules/playwright-core ] || { echo "bench-ingest-latency: run scripts/setup.sh (npm ci in e2e/)" >&2; exit 1; }
HLSJS=${WAVE_HLSJS_DIR:-$PWD/web/node_modules/hls.js/dist}
[ -f "$HLSJS/hls.min.js" ] || { echo "bench-ingest-latency: no hls.js at $HLSJS: run scripts/setup.sh (npm ci in web/)" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "bench-ingest-latency: apt-get install ffmpeg" >&2; exit 1; }

DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
ROOM="g2g-$$"
# The encoder, as a low-latency live encoder would be set: no B-frames, no
# lookahead (zerolatency), a keyframe every 2 s, every packet flushed.
X264=(-c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p -g 60 -keyint_min 60 -sc_threshold 0 -bf 0
  -b:v 2500k -maxrate 2500k -bufsize 1250k)
RAW=(-f rawvideo -pix_fmt yuv420p -s 1280x720 -r 30 -i -)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

"$SFU" serve --http 127.0.0.1:0 --rtmp-listen 127.0.0.1:0 --hlsjs-dir "$HLSJS" >"$DIR/node.out" 2>"$DIR/node.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^{' "$DIR/node.out" 2>/dev/null && break; sleep 0.1; done
READY=$(grep -m1 '^{' "$DIR/node.out") || { echo "bench-ingest-latency: the node did not start" >&2; tail "$DIR/node.log" >&2; exit 1; }
HTTP=$(echo "$READY" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["http"])')
RTMP=$(echo "$READY" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["rtmp"])')

# The source runs until the script ends and paces the video; the sine is
# read as FFmpeg needs it, so its timestamps follow the video's. (With `-re`
# the sine's clock starts after the RTMP handshake, behind the video's, and
# FLV interleaving then holds every video packet ~250 ms for audio.)
"$PY" scripts/ingest_latency.py source --seconds 0 | ffmpeg -hide_banner -loglevel error -nostdin "${RAW[@]}" \
  -f lavfi -i sine=frequency=440:sample_rate=44100 "${X264[@]}" -c:a aac -b:a 96k -flush_packets 1 \
  -f flv "rtmp://$RTMP/live/$ROOM" 2>"$DIR/ffmpeg.log" &
PIDS+=($!)
for _ in $(seq 150); do
  curl -sf "http://$HTTP/hls/$ROOM/index.m3u8" >/dev/null && break
  sleep 0.2
done
curl -sf "http://$HTTP/hls/$ROOM/index.m3u8" >/dev/null || {
  echo "bench-ingest-latency: no LL-HLS for $ROOM after 30 s" >&2; cat "$DIR/ffmpeg.log" >&2; tail "$DIR/node.log" >&2; exit 1; }

whep() { "$PY" scripts/ingest_latency.py whep --url "http://$HTTP/whep/$ROOM" --seconds "$SECS" --warmup "$WARMUP" >"$DIR/whep.json"; }
hls() { (cd e2e && node bench/ingest-latency.mjs --base "http://$HTTP" --room "$ROOM" --seconds "$SECS" --warmup "$WARMUP") >"$DIR/hls.json" 2>"$DIR/hls.log"; }
if [ "$MODE" = together ]; then
  whep &
  W=$!
  hls || { cat "$DIR/hls.log" >&2; exit 1; }
  wait "$W"
else
  whep
  hls || { cat "$DIR/hls.log" >&2; exit 1; }
fi
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
kill "${PIDS[@]}" 2>/dev/null || true
wait 2>/dev/null || true
PIDS=()

# Without the node: encode as above, decode at once (NUT frames packets, so
# the decoder need not wait for the next start code; one decoder thread, no
# frame-threading delay) and read the stamps of the raw frames.
"$PY" scripts/ingest_latency.py source --seconds $((SECS / 2 + WARMUP)) | ffmpeg -hide_banner -loglevel error "${RAW[@]}" \
  "${X264[@]}" -flush_packets 1 -f nut - |
  ffmpeg -hide_banner -loglevel error -threads 1 -flags low_delay -probesize 32 -analyzeduration 0 -fflags nobuffer \
    -f nut -i - -f rawvideo -pix_fmt gray -flush_packets 1 - |
  "$PY" scripts/ingest_latency.py readback --warmup "$WARMUP" >"$DIR/local.json"
LOAD2=$(cut -d' ' -f1-3 /proc/loadavg)

echo "RTMP ingest glass to glass: 1280x720 30 fps, libx264 veryfast zerolatency 2.5 Mbit/s, GOP 2 s; ${SECS} s after ${WARMUP} s (viewers $MODE)"
sed 's/^/  /' "$DIR/hls.log"
"$PY" - "$DIR/whep.json" "$DIR/hls.json" "$DIR/local.json" <<'EOF'
import json, sys
print(f"{'':28} {'samples':>7} {'failed':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'min ms':>7}")
for path in sys.argv[1:]:
    r = json.loads(open(path).read().strip().splitlines()[-1])
    print(f"{r['what']:28} {r['samples']:>7} {r['failed']:>6} {r['p50_ms']!s:>7} {r['p95_ms']!s:>7} {r['max_ms']!s:>7} {r['min_ms']!s:>7}")
EOF
echo "load average (1/5/15 min): $LOAD0 at start, $LOAD1 after the viewers, $LOAD2 after the local encode"
