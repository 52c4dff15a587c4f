#!/usr/bin/env node
// The hls.js half of the RTMP-ingest glass-to-glass bench (issue 18's
// benchmark; scripts/bench-ingest-latency.sh starts the node, the stamped
// source and FFmpeg, and runs this next to an aiortc WHEP viewer). A
// Chromium page plays /hls/{room}/index.m3u8 of `--base` with hls.js
// (the demo page's `wave.playHls`); for every frame it presents
// (`requestVideoFrameCallback`) it draws the video to a canvas and reads
// the stamp scripts/ingest_latency.py drew into the picture (the wall-clock
// ms at which the frame was handed to FFmpeg): latency = Date.now() - stamp.
// Source, node and browser share this machine's clock. Prints a summary and
// one JSON line last, like the Python parts.
//
//   node bench/ingest-latency.mjs --base http://127.0.0.1:PORT --room ROOM [--seconds 30] [--warmup 5]
//                                 [--hlsjs '{"liveSyncDuration":0.6}']
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { hlsStats, launchBrowser, until } from '../tests/helpers.mjs';

const { values: opt } = parseArgs({
  options: {
    base: { type: 'string' },
    room: { type: 'string' },
    seconds: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '5' },
    hlsjs: { type: 'string', default: '{}' },
  },
});
if (!opt.base || !opt.room) {
  console.error('usage: node bench/ingest-latency.mjs --base http://127.0.0.1:PORT --room ROOM (see scripts/bench-ingest-latency.sh)');
  process.exit(2);
}
const seconds = Number(opt.seconds);
const warmup = Number(opt.warmup);

const browser = await launchBrowser();
let failed = false;
try {
  const viewer = await browser.page(`${opt.base}/`, 'hls viewer');
  const played = await viewer.evaluate(({ r, config }) => window.wave.playHls(r, { config }), { r: opt.room, config: JSON.parse(opt.hlsjs) });
  await until(viewer, (s) => s.hls?.totalVideoFrames > 0 && s.hls.currentTime > 0, 20_000, 'first frames', hlsStats);
  // The stamp reader, in the page: the same layout as read_stamp() in
  // scripts/ingest_latency.py (two rows of 40 blocks, the lower the
  // complement of the upper; `1010`, 32 bits of ms, `0101`).
  await viewer.evaluate(() => {
    const video = document.getElementById('hls-video');
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const BLOCKS = 40;
    const HEAD = [1, 0, 1, 0];
    const TAIL = [0, 1, 0, 1];
    const MIN_CONTRAST = 48;
    const bench = { lat: [], failed: 0, frames: 0, size: '' };
    window.ingestBench = bench;
    function read(now) {
      const w = video.videoWidth;
      const h = video.videoHeight;
      if (canvas.width !== w || canvas.height !== h) Object.assign(canvas, { width: w, height: h });
      const block = w / BLOCKS;
      const bandH = Math.ceil(block * 2);
      ctx.drawImage(video, 0, 0, w, h);
      const px = ctx.getImageData(0, 0, w, bandH).data;
      const half = block / 4;
      const luma = (cx, cy) => {
        let total = 0;
        let n = 0;
        for (let y = Math.floor(cy - half); y < Math.floor(cy + half); y += 2) {
          for (let x = Math.floor(cx - half); x < Math.floor(cx + half); x++) {
            const i = (y * w + x) * 4;
            total += (px[i] + px[i + 1] + px[i + 2]) / 3;
            n++;
          }
        }
        return total / n;
      };
      const bits = [];
      for (let i = 0; i < BLOCKS; i++) {
        const cx = i * block + block / 2;
        const upper = luma(cx, block / 2);
        const lower = luma(cx, (block * 3) / 2);
        if (Math.abs(upper - lower) < MIN_CONTRAST) return null;
        bits.push(upper > lower ? 1 : 0);
      }
      if (bits.slice(0, 4).join() !== HEAD.join() || bits.slice(-4).join() !== TAIL.join()) return null;
      let low = 0;
      for (const b of bits.slice(4, 36)) low = low * 2 + b;
      const wrap = 2 ** 32;
      const ms = now - ((((now - low) % wrap) + wrap) % wrap);
      return now - ms < 60_000 ? ms : null;
    }
    const onFrame = () => {
      const now = Date.now();
      bench.frames++;
      bench.size = `${video.videoWidth}x${video.videoHeight}`;
      try {
        const ms = video.videoWidth ? read(now) : null;
        if (ms === null) bench.failed++;
        else bench.lat.push(now - ms);
      } catch {
        bench.failed++;
      } finally {
        video.requestVideoFrameCallback(onFrame);
      }
    };
    video.requestVideoFrameCallback(onFrame);
  });
  await sleep(warmup * 1000);
  await viewer.evaluate(() => Object.assign(window.ingestBench, { lat: [], failed: 0, frames: 0 }));
  const before = (await hlsStats(viewer)).hls;
  await sleep(seconds * 1000);
  const bench = await viewer.evaluate(() => window.ingestBench);
  const { hls } = await hlsStats(viewer);
  const lat = [...bench.lat].sort((a, b) => a - b);
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null);
  console.error(
    `hls.js ${played.version}, ${bench.size}: ${bench.frames} frames presented in ${seconds} s (after ${warmup} s), ` +
      `hls.latency ${hls.latency?.toFixed(3)} s (target ${hls.targetLatency?.toFixed(3)} s), playbackRate ${hls.playbackRate}, ` +
      `stalls ${hls.stalls - before.stalls}, dropped frames ${hls.droppedVideoFrames - before.droppedVideoFrames}, ` +
      `part loads ${hls.partLoads - before.partLoads}, segment loads ${hls.fragLoads - before.fragLoads}`,
  );
  if (!lat.length) throw new Error(`no stamp read from ${bench.frames} frames (${bench.failed} failed)`);
  console.log(JSON.stringify({
    what: 'LL-HLS (hls.js)',
    samples: lat.length,
    failed: bench.failed,
    p50_ms: q(0.5),
    p95_ms: q(0.95),
    max_ms: lat.at(-1),
    min_ms: lat[0],
    frames: bench.frames,
    size: bench.size,
    hlsjs: played.version,
    hls_latency_s: hls.latency,
    stalls: hls.stalls - before.stalls,
    dropped: hls.droppedVideoFrames - before.droppedVideoFrames,
  }));
} catch (e) {
  failed = true;
  console.error(`bench failed: ${e.message}`);
} finally {
  await browser.close();
}
process.exitCode = failed ? 1 : 0;
