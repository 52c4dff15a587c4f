#!/usr/bin/env node
// How a WebRTC viewer starts on a layer, measured in Chromium both ways:
// from the node's cached keyframe group (`--keyframe-cache true`: the
// group's frames arrive in a burst) or from a fresh keyframe the node asks
// the publisher for (`--keyframe-cache false`). The real `sfu` binary, a
// Chromium page publishing 3-layer simulcast, an "anchor" viewer whose
// (re)join makes the publisher send a keyframe on the low layer, then the
// measured viewer joining the low layer 100–900 ms later (inside the
// cache's 1 s window). Per trial: watch() → first frame presented
// (requestVideoFrameCallback), and the jitter buffer's mean delay per frame
// in the first 2 s and in seconds 4–6 after the join (a burst of older
// frames would show as a higher delay that the buffer carries on).
//
//   node bench/keyframe-start.mjs [--trials 10]
//
// WAVE_BIN_DIR picks the sfu binary (default target/release).
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { launchBrowser, startNode, until } from '../tests/helpers.mjs';

const { values: opt } = parseArgs({ options: { trials: { type: 'string', default: '10' } } });
const trials = Number(opt.trials);

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function jitterMs(page) {
  const s = (await page.evaluate(() => window.wave.stats())).watch;
  return { delay: s.jitterBufferDelay, count: s.jitterBufferEmittedCount, frames: s.framesDecoded };
}
const windowMs = (a, b) => (b.count > a.count ? ((b.delay - a.delay) / (b.count - a.count)) * 1000 : NaN);

async function run(cache) {
  const room = `kf-${cache}-${randomBytes(3).toString('hex')}`;
  const node = await startNode({ env: { SFU_KEYFRAME_CACHE: String(cache), RUST_LOG: 'warn' } });
  const browser = await launchBrowser();
  const rows = [];
  try {
    const publisher = await browser.page(`${node.base}/`, 'publisher');
    await publisher.evaluate((r) => window.wave.publish(r, {}), room);
    await until(publisher, (s) => s.publish?.layers?.some((l) => l.framesEncoded > 60), 20_000, 'publisher encoding');
    const anchor = await browser.page(`${node.base}/`, 'anchor');
    const viewer = await browser.page(`${node.base}/`, 'viewer');
    for (let i = 0; i < trials; i++) {
      await anchor.evaluate((r) => window.wave.watch(r, { layer: 'low' }), room);
      await until(anchor, (s) => s.watch?.framesDecoded > 0, 10_000, 'anchor decoding');
      await sleep(100 + Math.random() * 800);
      const joinMs = await viewer.evaluate(async (r) => {
        const t0 = performance.now();
        await window.wave.watch(r, { layer: 'low' });
        const v = document.getElementById('watch-video');
        await new Promise((ok) => v.requestVideoFrameCallback(() => ok()));
        return performance.now() - t0;
      }, room);
      const j0 = await jitterMs(viewer);
      await sleep(2000);
      const j2 = await jitterMs(viewer);
      await sleep(2000);
      const j4 = await jitterMs(viewer);
      await sleep(2000);
      const j6 = await jitterMs(viewer);
      rows.push({ joinMs, early: windowMs(j0, j2), late: windowMs(j4, j6) });
      process.stdout.write(`  cache=${cache} trial ${i + 1}: join ${joinMs.toFixed(0)} ms, jitter buffer ${windowMs(j0, j2).toFixed(1)} → ${windowMs(j4, j6).toFixed(1)} ms/frame\n`);
    }
    const cached = Number((await node.metrics(/^wave_keyframe_cache_starts_total /)).split(' ')[1] ?? 0);
    const plis = Number((await node.metrics(/^wave_keyframe_requests_total /)).split(' ')[1] ?? 0);
    return { rows, cached, plis };
  } finally {
    await browser.close();
    node.child.kill('SIGTERM');
    await node.exited;
  }
}

const results = {};
for (const cache of [true, false]) results[cache] = await run(cache);
console.log(`\n| start | trials | join p50 | join p95 | join max | jitter buffer 0–2 s | 4–6 s | cache starts | PLIs sent |`);
console.log(`|---|---|---|---|---|---|---|---|---|`);
for (const cache of [true, false]) {
  const { rows, cached, plis } = results[cache];
  const j = rows.map((r) => r.joinMs);
  console.log(
    `| ${cache ? 'cached group' : 'fresh keyframe'} | ${rows.length} | ${pct(j, 50).toFixed(0)} ms | ${pct(j, 95).toFixed(0)} ms | ${Math.max(...j).toFixed(0)} ms | ${mean(rows.map((r) => r.early)).toFixed(1)} ms | ${mean(rows.map((r) => r.late)).toFixed(1)} ms | ${cached} | ${plis} |`,
  );
}
