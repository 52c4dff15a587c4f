// Issue 18: Debian's FFmpeg pushes H.264 + AAC over RTMP (`--rtmp-listen`)
// into a room of the real `sfu` binary; hls.js plays the room's LL-HLS in
// Chromium: the variant names AAC, frames and currentTime advance, and
// Chromium decodes audio.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { browserSuite, freePort, HLSJS_DIR, hlsStats, until } from './helpers.mjs';

const ROOM = `e2e-rtmp-${randomBytes(4).toString('hex')}`;
const FFMPEG = process.env.WAVE_FFMPEG ?? '/usr/bin/ffmpeg';
const WATCH_MS = 8_000;
// 30 fps for 8 s is 240 frames; hls.js may play at 0.9x to hold its target.
const MIN_FRAMES = 150;

describe(`RTMP ingest played by hls.js (room ${ROOM})`, { timeout: 90_000 }, () => {
  let rtmpPort;
  let ffmpeg;
  const suite = browserSuite(async () => {
    if (!existsSync(`${HLSJS_DIR}/hls.min.js`)) throw new Error(`no hls.js at ${HLSJS_DIR}: run scripts/setup.sh (npm ci in web/)`);
    if (!existsSync(FFMPEG)) throw new Error(`no ffmpeg at ${FFMPEG}: apt-get install ffmpeg`);
    rtmpPort = await freePort();
    return { env: { SFU_HLSJS_DIR: HLSJS_DIR, SFU_RTMP_LISTEN: `127.0.0.1:${rtmpPort}` } };
  });
  const { pages, step } = suite;
  after(() => ffmpeg?.kill('SIGKILL'));

  it('FFmpeg publishes H.264 + AAC over RTMP', step(async (t) => {
    const stderr = [];
    ffmpeg = spawn(FFMPEG, [
      '-hide_banner', '-loglevel', 'error', '-nostdin', '-re',
      '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=30',
      '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100',
      '-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency', '-pix_fmt', 'yuv420p',
      '-g', '60', '-keyint_min', '60', '-sc_threshold', '0', '-bf', '0',
      '-c:a', 'aac', '-b:a', '96k', '-t', '60',
      '-f', 'flv', `rtmp://127.0.0.1:${rtmpPort}/live/${ROOM}`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    ffmpeg.stderr.on('data', (d) => stderr.push(String(d)));
    const t0 = Date.now();
    let tracks = [];
    while (Date.now() - t0 < 15_000) {
      const room = (await suite.node.rooms()).find((r) => r.room === ROOM);
      tracks = room?.publishers?.[0]?.tracks ?? [];
      if (tracks.some((tr) => tr.kind === 'video' && tr.bitrate_bps > 0)) break;
      assert.equal(ffmpeg.exitCode, null, `ffmpeg exited: ${stderr.join('')}`);
      await sleep(250);
    }
    t.diagnostic(`publisher after ${Date.now() - t0} ms: ${JSON.stringify(tracks)}`);
    assert.ok(tracks.some((tr) => tr.kind === 'video' && tr.codec === 'H264' && tr.bitrate_bps > 0), `no H.264 from the RTMP publisher: ${JSON.stringify(tracks)}`);
    assert.ok(tracks.some((tr) => tr.kind === 'audio' && tr.codec === 'opus' && tr.bitrate_bps > 0), `no Opus (from AAC): ${JSON.stringify(tracks)}`);
  }));

  it('hls.js plays it: AAC variant, frames advance, audio decoded', step(async (t) => {
    pages.viewer = await suite.browser.page(`${suite.node.base}/`, 'hls viewer');
    const played = await pages.viewer.evaluate((room) => window.wave.playHls(room), ROOM);
    t.diagnostic(`hls.js ${played.version}: ${JSON.stringify(played.levels)}`);
    assert.equal(played.engine, 'hlsjs');
    assert.ok(played.levels.some((l) => /mp4a/.test(String(l.codecs))), `no AAC variant: ${JSON.stringify(played.levels)}`);
    await until(pages.viewer, (s) => s.hls?.totalVideoFrames > 0 && s.hls.currentTime > 0 && !s.hls.paused, 15_000,
      'the first frames on screen', hlsStats);
    const audioBytes = () => pages.viewer.evaluate(() =>
      Math.max(0, ...[...document.querySelectorAll('video')].map((v) => v.webkitAudioDecodedByteCount ?? 0)));
    const a = (await hlsStats(pages.viewer)).hls;
    const audioA = await audioBytes();
    await sleep(WATCH_MS);
    const b = (await hlsStats(pages.viewer)).hls;
    const audioB = await audioBytes();
    const summary = `frames ${a.totalVideoFrames} -> ${b.totalVideoFrames}, currentTime ${a.currentTime.toFixed(2)} -> ` +
      `${b.currentTime.toFixed(2)}, ${b.width}x${b.height}, latency ${b.latency?.toFixed(2)} s, audio bytes decoded ` +
      `${audioA} -> ${audioB}, stalls ${b.stalls}, errors ${JSON.stringify(b.errors)}`;
    t.diagnostic(summary);
    assert.ok(b.totalVideoFrames - a.totalVideoFrames >= MIN_FRAMES, `frames must advance: ${summary}`);
    assert.ok(b.currentTime - a.currentTime >= (WATCH_MS / 1000) * 0.8, `currentTime must advance: ${summary}`);
    assert.equal(`${b.width}x${b.height}`, '640x360', summary);
    assert.ok(audioB > audioA, `Chromium decoded no audio: ${summary}`);
  }));
});
