#!/usr/bin/env node
// Glass-to-glass latency of LL-HLS in hls.js (issue 4's benchmark): the real
// `sfu` binary, a Chromium page publishing 3-layer H.264 simulcast over WHIP,
// a second page playing /hls/{room}/index.m3u8 with hls.js. Every 100 ms it
// samples Date.now() - hls.playingDate (the PROGRAM-DATE-TIME of the frame on
// screen; the node stamps PDT with the publisher's capture time from its
// RTCP sender reports, and publisher, node and player share this machine's
// clock) and hls.latency, then prints p50/p95. Target: <= 1.5 s.
//
//   npm run bench:hls-latency -- [--seconds 30] [--warmup 5] [--part-ms 333] [--segment-ms 2000]
//                                [--hlsjs '{"liveSyncDuration":0.6}']
//
// WAVE_BIN_DIR picks the sfu binary (default target/release).
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { HLSJS_DIR, hlsStats, launchBrowser, startNode, until } from '../tests/helpers.mjs';

const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '5' },
    'part-ms': { type: 'string' },
    'segment-ms': { type: 'string' },
    hlsjs: { type: 'string', default: '{}' },
  },
});
const seconds = Number(opt.seconds);
const warmup = Number(opt.warmup);
const hlsjsConfig = JSON.parse(opt.hlsjs);
const env = { SFU_HLSJS_DIR: HLSJS_DIR, RUST_LOG: process.env.RUST_LOG ?? 'info' };
if (opt['part-ms']) env.SFU_HLS_PART_MS = opt['part-ms'];
if (opt['segment-ms']) env.SFU_HLS_SEGMENT_MS = opt['segment-ms'];
const room = `bench-hls-${randomBytes(3).toString('hex')}`;

const node = await startNode({ env });
const browser = await launchBrowser();
let failed = false;
try {
  const publisher = await browser.page(`${node.base}/`, 'publisher');
  await publisher.evaluate((r) => window.wave.publish(r), room);
  await until(publisher, (s) => s.publish?.state === 'connected' && s.publish.layers.every((l) => l.framesEncoded > 0), 20_000, 'publisher connected');

  // The ladder appears once the node has seen each layer's first segment.
  const url = `${node.base}/hls/${room}/index.m3u8`;
  const t0 = Date.now();
  let multivariant = '';
  while (Date.now() - t0 < 20_000) {
    const res = await fetch(url);
    multivariant = await res.text();
    if (res.ok && (multivariant.match(/#EXT-X-STREAM-INF/g) ?? []).length >= 3) break;
    await sleep(250);
  }
  const media = await (await fetch(new URL(multivariant.split('\n').find((l) => l && !l.startsWith('#')), url))).text();
  const tag = (name) => media.split('\n').find((l) => l.startsWith(`#${name}`)) ?? `(no ${name})`;

  const viewer = await browser.page(`${node.base}/`, 'hls viewer');
  const played = await viewer.evaluate(({ r, config }) => window.wave.playHls(r, { config }), { r: room, config: hlsjsConfig });
  await until(viewer, (s) => s.hls?.totalVideoFrames > 0 && s.hls.currentTime > 0, 20_000, 'first frames', hlsStats);
  await sleep(warmup * 1000);

  const samples = [];
  const start = Date.now();
  while (Date.now() - start < seconds * 1000) {
    const { hls } = await hlsStats(viewer);
    if (hls.sincePlayingDateMs !== null) samples.push(hls);
    await sleep(100);
  }
  if (!samples.length) throw new Error('hls.playingDate was never set: no PROGRAM-DATE-TIME in the playlists?');
  const last = samples.at(-1);
  const g2g = samples.map((s) => s.sincePlayingDateMs / 1000);
  const lat = samples.map((s) => s.latency).filter((v) => typeof v === 'number');
  const buf = samples.map((s) => s.bufferAheadS);
  const row = (name, xs, unit = 's') =>
    `${name.padEnd(26)} p50 ${q(xs, 0.5).toFixed(3)} ${unit}  p95 ${q(xs, 0.95).toFixed(3)} ${unit}  min ${Math.min(...xs).toFixed(3)}  max ${Math.max(...xs).toFixed(3)}`;

  console.log(`hls.js ${played.version} against ${url}, ${samples.length} samples over ${seconds} s after ${warmup} s of play`);
  console.log(`node: ${tag('EXT-X-PART-INF')}  ${tag('EXT-X-TARGETDURATION')}  ${tag('EXT-X-SERVER-CONTROL')}`);
  console.log(`hls.js config (page defaults + --hlsjs): ${JSON.stringify(played.config)}; targetLatency ${last.targetLatency?.toFixed(3)} s`);
  console.log(row('glass to glass (now-PDT)', g2g));
  console.log(row('hls.latency (to live edge)', lat));
  console.log(row('buffer ahead', buf));
  console.log(`playing level ${last.currentLevel} of ${last.levels.length} (${last.width}x${last.height}), playbackRate ${last.playbackRate}, ` +
    `stalls ${last.stalls} (longest ${last.longestStallMs} ms), dropped frames ${last.droppedVideoFrames}, ` +
    `part loads ${last.partLoads}, segment loads ${last.fragLoads}, blocking reloads ${last.blockingReloads}`);
  const p50 = q(g2g, 0.5);
  console.log(`glass-to-glass p50 ${p50.toFixed(3)} s: ${p50 <= 1.5 ? 'meets' : 'misses'} the 1.5 s target`);
} catch (e) {
  failed = true;
  console.error(`bench failed: ${e.message}\n--- sfu log tail ---\n${node.logTail(40)}`);
} finally {
  await browser.close();
  await node.kill();
  node.cleanup({ keepLog: failed });
}
process.exitCode = failed ? 1 : 0;

function q(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}
