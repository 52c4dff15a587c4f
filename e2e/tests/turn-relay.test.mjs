// Issue 5, test 3: Chromium with iceTransportPolicy 'relay' publishes to and
// plays from a WAVE node running its embedded TURN server (`--turn`). The
// pages get their only ICE servers from the node: the `Link: <turn:...>;
// rel="ice-server"` values of each 201 (RFC 9725 §4.6: the offer is POSTed
// before gathering, the servers applied with setConfiguration, candidates
// trickled). Both pages must select a relay candidate from that server, and
// the viewer must keep decoding frames. Everything runs on 127.0.0.1.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { browserSuite, freePort, stats, until } from './helpers.mjs';

const ROOM = `turn-${randomBytes(4).toString('hex')}`;
const SAMPLE_MS = 2000;
const MIN_DELTA = 20;

describe(`TURN relay end to end (room ${ROOM})`, { timeout: 120_000 }, () => {
  let turnPort;
  const suite = browserSuite(async () => {
    turnPort = await freePort();
    return { env: { SFU_TURN: 'true', SFU_TURN_LISTEN: `127.0.0.1:${turnPort}`, SFU_TURN_TTL: '10m' } };
  });
  const { pages, step } = suite;

  it(
    'publishes over a relay candidate from the node-advertised TURN server',
    step(async () => {
      pages.publisher = await suite.browser.page(suite.node.url, 'publisher');
      const r = await pages.publisher.evaluate(
        (room) => window.wave.publish(room, { width: 640, height: 360, simulcast: false, iceTransportPolicy: 'relay' }),
        ROOM,
      );
      assertNodeTurn(r.iceServers);
      const s = await until(
        pages.publisher,
        (s) => s.publish?.state === 'connected' && s.publish.path && s.publish.layers.some((l) => l.framesEncoded > 0),
        20_000,
        'publisher connected',
      );
      assert.equal(s.publish.path.local, 'relay', `publisher path: ${JSON.stringify(s.publish.path)}`);
      assert.match(s.publish.path.url ?? '', new RegExp(`^turns?:127\\.0\\.0\\.1:${turnPort}`));
      console.log(`publisher path: ${JSON.stringify(s.publish.path)}`);
    }),
  );

  it(
    'plays over a relay candidate and keeps decoding',
    step(async () => {
      pages.viewer = await suite.browser.page(suite.node.url, 'viewer');
      const r = await pages.viewer.evaluate(
        (room) => window.wave.watch(room, { iceTransportPolicy: 'relay' }),
        ROOM,
      );
      assertNodeTurn(r.iceServers);
      const first = await until(
        pages.viewer,
        (s) => s.watch?.state === 'connected' && s.watch.path && s.watch.framesDecoded > 0,
        30_000,
        'viewer decoding',
      );
      assert.equal(first.watch.path.local, 'relay', `viewer path: ${JSON.stringify(first.watch.path)}`);
      assert.match(first.watch.path.url ?? '', new RegExp(`^turns?:127\\.0\\.0\\.1:${turnPort}`));
      await sleep(SAMPLE_MS);
      const a = (await stats(pages.viewer)).watch;
      await sleep(SAMPLE_MS);
      const b = (await stats(pages.viewer)).watch;
      assert.ok(
        b.framesDecoded - a.framesDecoded >= MIN_DELTA,
        `framesDecoded ${a.framesDecoded} -> ${b.framesDecoded} in ${SAMPLE_MS} ms`,
      );
      assert.equal(b.path.local, 'relay', `viewer path later: ${JSON.stringify(b.path)}`);
      const p = (await stats(pages.publisher)).publish;
      assert.equal(p.path.local, 'relay', `publisher path later: ${JSON.stringify(p.path)}`);
      console.log(
        `viewer path: ${JSON.stringify(b.path)}; framesDecoded ${a.framesDecoded} -> ${b.framesDecoded} ` +
          `in ${SAMPLE_MS} ms (${b.frameWidth}x${b.frameHeight})`,
      );
    }),
  );

  it(
    'stops both sessions',
    step(async () => {
      for (const [kind, page] of [['watch', pages.viewer], ['publish', pages.publisher]]) {
        const r = await page.evaluate((k) => window.wave.stop(k), kind);
        assert.equal(r[kind], 200, `DELETE ${kind}`);
      }
      const t = await suite.node.terminate(2000);
      assert.ok(t && t.ms <= 2000, `node with embedded TURN exits within 2 s: ${JSON.stringify(t)}`);
    }),
  );

  // The page used the node's TURN server and nothing else.
  function assertNodeTurn(servers) {
    assert.ok(Array.isArray(servers) && servers.length > 0, `no ICE servers from the 201: ${JSON.stringify(servers)}`);
    for (const s of servers) {
      assert.match(String(s.urls), new RegExp(`^turn:127\\.0\\.0\\.1:${turnPort}\\?transport=(udp|tcp)$`));
      assert.match(s.username, /^\d+:/);
      assert.ok(s.credential, 'a credential');
    }
  }
});
