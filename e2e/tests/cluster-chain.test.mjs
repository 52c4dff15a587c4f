// A relay tree three levels deep and the death of its middle: three secured
// nodes with `--relay-fanout 1` (each node feeds one other, so the room's
// tree is a chain origin → middle → leaf) and a real nats-server. Chromium
// publishes through node A's demo page and watches on B and C; the room's
// `/v1/rooms` answers show which of B and C is the middle. kill -9 of the
// middle: the leaf's viewer decodes frames again within 3 s (fed by A
// directly now), its RTP numbering continuous (the lost-packet count grows
// by the outage only, the inbound stream is the same one).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN_DIR, failureContext, launchBrowser, startCluster, stats, stopCluster, until } from './helpers.mjs';

const ROOM = `chain-${randomBytes(4).toString('hex')}`;
const SECRET = `e2e-${randomBytes(8).toString('hex')}`;

function token(args) {
  return execFileSync(join(BIN_DIR, 'sfu'), ['token', '--secret', SECRET, ...args]).toString().trim();
}

describe(`a three-level relay chain survives its middle node (room ${ROOM})`, { timeout: 150_000 }, () => {
  const nodes = {};
  const pages = {};
  let cluster;
  let browser;
  const ctx = failureContext(() => nodes.a, pages);
  const bearer = () => ({ Authorization: `Bearer ${token(['--room', '*', '--identity', 'e2e-admin', '--subscribe'])}` });

  before(async () => {
    cluster = await startCluster({ ids: ['a', 'b', 'c'], secret: SECRET, env: { SFU_RELAY_FANOUT: '1' }, bearer });
    Object.assign(nodes, cluster.nodes);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    if (cluster) await stopCluster(cluster, ctx);
  });

  it(
    'viewers on B and C decode A through a chain; kill -9 of the middle, the leaf decodes again within 3 s',
    ctx.step(async (t) => {
      pages.pub = await browser.page(`${nodes.a.base}/`, 'publisher@a');
      const pubToken = token(['--room', ROOM, '--identity', 'alice', '--publish']);
      await pages.pub.evaluate(([room, token]) => window.wave.publish(room, { token }), [ROOM, pubToken]);
      await until(pages.pub, (s) => s.publish?.state === 'connected' && s.publish.layers.some((l) => l.framesEncoded > 0), 20_000, 'publisher connected');
      for (const id of ['b', 'c']) {
        pages[id] = await browser.page(`${nodes[id].base}/`, `viewer@${id}`);
        const viewToken = token(['--room', ROOM, '--identity', `viewer-${id}`, '--subscribe']);
        await pages[id].evaluate(([room, token]) => window.wave.watch(room, { token, layer: 'low' }), [ROOM, viewToken]);
        await until(pages[id], (s) => s.watch?.framesDecoded > 30, 30_000, `viewer on ${id} decoding`);
      }

      // Which of B and C is fed by A (the middle) and which by the other (the leaf).
      const listed = await (await fetch(`${nodes.a.base}/v1/nodes`, { headers: bearer() })).json();
      const relayOf = Object.fromEntries(listed.nodes.map((n) => [n.id, n.relay_addr]));
      const parentOf = async (id) => {
        const r = await fetch(`${nodes[id].base}/v1/rooms/${ROOM}`, { headers: bearer() });
        const room = await r.json();
        const peer = room.relay?.parents?.[0]?.peer;
        return Object.keys(relayOf).find((n) => relayOf[n] === peer) ?? `unknown (${JSON.stringify(room.relay)})`;
      };
      const parents = { b: await parentOf('b'), c: await parentOf('c') };
      t.diagnostic(`parents: b ← ${parents.b}, c ← ${parents.c}`);
      const middle = ['b', 'c'].find((id) => parents[id] === 'a');
      const leaf = ['b', 'c'].find((id) => id !== middle);
      assert.ok(middle, `one of B and C is fed by A: ${JSON.stringify(parents)}`);
      assert.equal(parents[leaf], middle, `the other is fed by the middle: ${JSON.stringify(parents)}`);

      // kill -9 of the middle; poll the leaf's decoder every 100 ms.
      const before = (await stats(pages[leaf])).watch;
      const killedAt = Date.now();
      nodes[middle].child.kill('SIGKILL');
      let last = before.framesDecoded;
      let stalledSince = null;
      let resumedAt = null;
      while (Date.now() - killedAt < 10_000) {
        const w = (await stats(pages[leaf])).watch;
        if (w.framesDecoded > last) {
          if (stalledSince !== null && Date.now() - stalledSince >= 300) {
            resumedAt = Date.now();
            break;
          }
          stalledSince = null;
        } else if (stalledSince === null) {
          stalledSince = Date.now();
        }
        last = w.framesDecoded;
        await sleep(100);
      }
      assert.ok(resumedAt, `the leaf (${leaf}) decoded nothing new within 10 s of the kill`);
      const gap = resumedAt - killedAt;
      const after = await until(pages[leaf], (s) => s.watch.framesDecoded > last + 30, 10_000, 'the leaf keeps decoding');
      const lost = after.watch.packetsLost - before.packetsLost;
      t.diagnostic(
        `middle ${middle} killed: leaf ${leaf} decoded again after ${gap} ms; packets lost meanwhile ${lost}; ` +
          `frames ${before.framesDecoded} → ${after.watch.framesDecoded}`,
      );
      assert.ok(gap <= 3000, `the leaf's viewer saw media again ${gap} ms after the kill (≤ 3000 ms)`);
      // Continuous numbering: the loss counted is the outage's packets, not
      // a jump of the sequence space (a new stream would count thousands or
      // go negative).
      assert.ok(lost >= 0 && lost < 1000, `packets lost across the re-parent: ${lost}`);
      assert.equal(await parentOf(leaf), 'a', 'the leaf is fed by the origin now');
    }),
  );
});
