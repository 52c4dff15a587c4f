// The relay: a secured three-node cluster (a real nats-server, three real
// `sfu` nodes with --auth-secret on 127.0.0.1). Chromium publishes through
// node A's demo page with a bearer token; Chromium pages served by nodes B
// and C watch the room over WHEP with their tokens. Every request is
// answered by the node it reached (no redirect: a browser would drop the
// token on one), viewers on all three nodes decode the publisher's frames
// (B's and C's fed over QUIC from A), a layer switch on C changes the
// decoded width, hls.js plays the room's LL-HLS from B, and a second
// publisher through B's page makes B a second origin whose stream viewers
// on C and A decode.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN_DIR, failureContext, HLSJS_DIR, launchBrowser, startCluster, stats, stopCluster, until } from './helpers.mjs';

const ROOM = `relay-${randomBytes(4).toString('hex')}`;
const SECRET = `e2e-${randomBytes(8).toString('hex')}`;
const WIDTH = { low: 320, mid: 640 };

function token(args) {
  return execFileSync(join(BIN_DIR, 'sfu'), ['token', '--secret', SECRET, ...args]).toString().trim();
}

describe(`a room across three nodes over the relay (room ${ROOM})`, { timeout: 150_000 }, () => {
  const nodes = {};
  const pages = {};
  let cluster;
  let browser;
  const ctx = failureContext(() => nodes.a, pages);
  const admin = () => token(['--room', '*', '--identity', 'e2e-admin', '--subscribe']);

  before(async () => {
    cluster = await startCluster({ ids: ['a', 'b', 'c'], secret: SECRET, env: { SFU_HLSJS_DIR: HLSJS_DIR }, bearer: () => ({ Authorization: `Bearer ${admin()}` }) });
    Object.assign(nodes, cluster.nodes);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    if (cluster) await stopCluster(cluster, ctx);
  });

  it(
    'A publishes with a token through its demo page; viewers on A, B and C decode it, no redirect',
    ctx.step(async (t) => {
      pages.pub = await browser.page(`${nodes.a.base}/`, 'publisher@a');
      const pubToken = token(['--room', ROOM, '--identity', 'alice', '--publish']);
      const pub = await pages.pub.evaluate(
        ([room, token]) => window.wave.publish(room, { token }),
        [ROOM, pubToken],
      );
      assert.equal(new URL(pub.location).origin, nodes.a.base, `WHIP answered by A itself: ${JSON.stringify(pub)}`);
      await until(pages.pub, (s) => s.publish?.state === 'connected' && s.publish.layers.some((l) => l.framesEncoded > 0), 20_000, 'publisher connected');

      // Viewers on all three nodes: A's own (local), B's and C's (relayed).
      for (const id of ['a', 'b', 'c']) {
        pages[id] = await browser.page(`${nodes[id].base}/`, `viewer@${id}`);
        const viewToken = token(['--room', ROOM, '--identity', `viewer-${id}`, '--subscribe']);
        const t0 = Date.now();
        const w = await pages[id].evaluate(
          ([room, token]) => window.wave.watch(room, { token, layer: 'low' }),
          [ROOM, viewToken],
        );
        assert.equal(new URL(w.location).origin, nodes[id].base, `WHEP answered by ${id} itself: ${JSON.stringify(w)}`);
        const s = await until(
          pages[id],
          (s) => s.watch?.framesDecoded > 30 && s.watch.frameWidth === WIDTH.low,
          30_000,
          `viewer on ${id} decoding the low layer`,
        );
        t.diagnostic(`viewer on ${id}: ${s.watch.framesDecoded} frames at ${s.watch.frameWidth}x${s.watch.frameHeight}, ${Date.now() - t0} ms after watch()`);
      }
      const metric = async (id, name) => {
        const text = await nodes[id].metrics(new RegExp(`^${name} `));
        return Number(text.split(' ')[1] ?? NaN);
      };
      assert.equal(await metric('b', 'wave_relay_upstream_rooms'), 1, 'B watches the room on A once');
      assert.equal(await metric('c', 'wave_relay_upstream_rooms'), 1, 'C watches the room on A once');
      assert.equal(await metric('a', 'wave_relay_downstream_links'), 2, 'A feeds two links');
    }),
  );

  it(
    'a layer switch on C changes the decoded width and frames keep coming',
    ctx.step(async (t) => {
      const before = (await stats(pages.c)).watch.framesDecoded;
      const status = await pages.c.evaluate(() => window.wave.setLayer('mid'));
      assert.equal(status, 200);
      const s = await until(pages.c, (s) => s.watch?.frameWidth === WIDTH.mid && s.watch.framesDecoded > before + 30, 40_000, 'C decoding the mid layer');
      t.diagnostic(`viewer on c: ${s.watch.frameWidth}x${s.watch.frameHeight} after ${s.elapsedMs} ms`);
      // B, still on low, keeps decoding.
      const b0 = (await stats(pages.b)).watch.framesDecoded;
      await until(pages.b, (s) => s.watch.framesDecoded > b0 + 20, 10_000, 'B still decoding');
    }),
  );

  it(
    "hls.js plays the room's LL-HLS from node B (packaged at A, passed on by B)",
    ctx.step(async (t) => {
      pages.hls = await browser.page(`${nodes.b.base}/`, 'hls@b');
      const viewToken = token(['--room', ROOM, '--identity', 'hls-b', '--subscribe']);
      const played = await pages.hls.evaluate(([room, token]) => window.wave.playHls(room, { token }), [ROOM, viewToken]);
      assert.equal(new URL(played.url, nodes.b.base).origin, nodes.b.base, `played from B: ${played.url}`);
      const hls = (page) => page.evaluate(() => ({ hls: window.wave.hlsStats() }));
      const first = await until(pages.hls, (s) => s.hls?.totalVideoFrames > 0 && s.hls.currentTime > 0, 30_000, 'HLS frames from B', hls);
      const later = await until(
        pages.hls,
        (s) => s.hls.totalVideoFrames > first.hls.totalVideoFrames + 60,
        20_000,
        'HLS frames advancing',
        hls,
      );
      t.diagnostic(`hls.js on B: ${later.hls.totalVideoFrames} frames, latency ${later.hls.latency?.toFixed?.(2)} s`);
    }),
  );

  it(
    "a second publisher through B's page is answered by B; viewers on C and A pinned to it decode it",
    ctx.step(async (t) => {
      // Fewer pages decoding on two cores: the earlier viewers are done.
      for (const id of ['hls', 'a', 'b']) {
        await pages[id]?.evaluate(() => window.wave.stop?.()).catch(() => {});
        await pages[id]?.close();
        delete pages[id];
      }
      pages.pub2 = await browser.page(`${nodes.b.base}/`, 'publisher@b');
      const bobToken = token(['--room', ROOM, '--identity', 'bob', '--publish']);
      const pub = await pages.pub2.evaluate(([room, token]) => window.wave.publish(room, { token }), [ROOM, bobToken]);
      assert.equal(new URL(pub.location).origin, nodes.b.base, `WHIP answered by B, a second origin: ${JSON.stringify(pub)}`);
      await until(pages.pub2, (s) => s.publish?.state === 'connected' && s.publish.layers.some((l) => l.framesEncoded > 0), 20_000, 'second publisher connected');
      for (const id of ['c', 'a']) {
        const name = `bob@${id}`;
        pages[name] = await browser.page(`${nodes[id].base}/`, `viewer of bob@${id}`);
        const viewToken = token(['--room', ROOM, '--identity', `bob-viewer-${id}`, '--subscribe']);
        const t0 = Date.now();
        const w = await pages[name].evaluate(
          ([room, token]) => window.wave.watch(room, { token, layer: 'low', publisher: 'bob' }),
          [ROOM, viewToken],
        );
        assert.equal(new URL(w.location).origin, nodes[id].base, `WHEP answered by ${id} itself`);
        const s = await until(pages[name], (s) => s.watch?.framesDecoded > 30, 30_000, `viewer of bob on ${id} decoding`);
        t.diagnostic(`viewer of bob on ${id}: ${s.watch.framesDecoded} frames at ${s.watch.frameWidth}x${s.watch.frameHeight}, ${Date.now() - t0} ms after watch()`);
      }
      // C is fed by both origins, each over its own link; A by B only.
      const relay = async (id) => {
        const r = await fetch(`${nodes[id].base}/v1/rooms/${ROOM}`, { headers: { Authorization: `Bearer ${admin()}` } });
        assert.equal(r.status, 200);
        return (await r.json()).relay;
      };
      assert.equal((await relay('c')).parents.length, 2, 'C has a parent per origin');
      assert.equal((await relay('a')).parents.length, 1, 'A is fed B, not itself');
      // The first viewer on C (alice, unpinned) still decodes.
      const c0 = (await stats(pages.c)).watch.framesDecoded;
      await until(pages.c, (s) => s.watch.framesDecoded > c0 + 20, 10_000, 'C still decoding alice');
    }),
  );
});
