// Issue 2, test 3: Chromium publishes 3-layer VP8 simulcast over WHIP to the
// real `sfu` binary; two more pages watch over WHEP, one capped at the low
// layer, one at the high layer; each must keep decoding at the width of the
// layer it asked for; a layer switch must change the width without the frame
// counter going backwards; DELETE must end the sessions; SIGTERM must stop
// the node within 2 s.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { browserSuite, stats, until } from './helpers.mjs';

const ROOM = `e2e-${randomBytes(4).toString('hex')}`;
// Widths Chrome encodes for a 1280x720 fake camera with scaleResolutionDownBy 4/2/1.
const WIDTH = { low: 320, mid: 640, high: 1280 };
// Two samples this far apart must show at least MIN_DELTA new decoded frames.
const SAMPLE_MS = 2000;
const MIN_DELTA = 20;
// Chrome's send-side BWE (publisher) and the node's (viewer) both start low.
const RAMP_MS = 25_000;

describe(`simulcast end to end (room ${ROOM})`, { timeout: 150_000 }, () => {
  const suite = browserSuite();
  const { pages, step } = suite;
  const watched = {};

  // Samples `wave.stats()` every 250 ms for up to `ms` (times reported in ms
  // since `origin`), asserting framesDecoded never goes backwards and
  // recording every frameWidth change. `done(w, history)` decides when to stop.
  const watchUntil = async (page, label, ms, { from = 0, origin = Date.now() }, done) => {
    const timeline = [];
    const history = [];
    let prev = from;
    let w;
    while (Date.now() - origin < ms) {
      w = (await stats(page)).watch ?? {};
      const now = Date.now() - origin;
      assert.ok(w.framesDecoded >= prev, `${label}: framesDecoded went backwards: ${prev} -> ${w.framesDecoded}`);
      prev = w.framesDecoded;
      if (timeline.at(-1)?.w !== w.frameWidth) timeline.push({ ms: now, w: w.frameWidth, dec: w.framesDecoded });
      history.push({ ms: now, ...w });
      const r = done(w, history);
      if (r) return { ...r, timeline, history, last: w };
      await sleep(250);
    }
    let rooms = null;
    try {
      rooms = await suite.node.rooms();
    } catch {}
    return {
      failed: `widths seen (ms, width, framesDecoded): ${JSON.stringify(timeline)}${stallNote(history)}; last samples: ${brief(history)}; ` +
        `last wave.stats(): ${JSON.stringify(w)}; viewers in /v1/rooms: ${JSON.stringify(rooms?.flatMap((r) => r.viewers))}`,
      timeline,
      history,
    };
  };

  // The longest stretch in which video packets kept arriving but no frame
  // completed: with no loss reported that is a stream the receiver cannot
  // assemble (e.g. VP8 PictureID/TL0PICIDX discontinuous after a layer switch).
  const longestStall = (history) => {
    let worst = { ms: 0 };
    let from = null;
    for (const h of history) {
      if (!from || h.framesReceived !== from.framesReceived) {
        from = h;
        continue;
      }
      const ms = h.ms - from.ms;
      if (ms > worst.ms && h.packetsReceived - from.packetsReceived > 0) {
        worst = { ms, fromMs: from.ms, toMs: h.ms, packets: h.packetsReceived - from.packetsReceived, framesReceived: h.framesReceived, lost: h.packetsLost };
      }
    }
    return worst;
  };
  const stallNote = (history) => {
    const st = longestStall(history ?? []);
    return st.ms >= 1000
      ? `; STALL: ${st.packets} video packets arrived between ${st.fromMs} and ${st.toMs} ms while framesReceived stayed at ` +
          `${st.framesReceived} (packetsLost ${st.lost}): the receiver could not assemble frames from what the node forwarded`
      : '';
  };

  // The last samples, compactly: ms, width, framesReceived/framesDecoded, packetsReceived, freezes.
  const brief = (history, n = 12) =>
    history
      .slice(-n)
      .map((h) => `${h.ms}ms ${h.frameWidth}w fr=${h.framesReceived} fd=${h.framesDecoded} pr=${h.packetsReceived} fz=${h.freezeCount}`)
      .join(' | ');

  // The check: two samples SAMPLE_MS apart, both at `width`, with
  // framesDecoded up by at least MIN_DELTA; polled for up to `ms`.
  const decodingAt = async (t, page, width, ms, label, opts = {}) => {
    let start = null;
    const r = await watchUntil(page, label, ms, opts, (w, history) => {
      const now = history.at(-1).ms;
      const at = w.state === 'connected' && w.frameWidth === width && w.framesDecoded > 0;
      if (start && now - start.ms >= SAMPLE_MS) {
        if (at && w.framesDecoded - start.framesDecoded >= MIN_DELTA) {
          return { first: history.find((h) => h.frameWidth === width).ms, a: start, b: history.at(-1) };
        }
        start = null;
      }
      if (!start && at) start = history.at(-1);
      return null;
    });
    assert.ok(!r.failed, `${label}: no two samples ${SAMPLE_MS} ms apart at width ${width} with framesDecoded Δ >= ${MIN_DELTA} within ${ms} ms; ${r.failed}`);
    const flaps = r.timeline.filter((x) => x.w > 0).length - 1;
    t.diagnostic(`${label}: first ${width}-wide frame at ${r.first} ms; samples at ${r.a.ms} and ${r.b.ms} ms: ` +
      `framesDecoded ${r.a.framesDecoded} -> ${r.b.framesDecoded} (Δ ${r.b.framesDecoded - r.a.framesDecoded}), ` +
      `${r.b.frameWidth}x${r.b.frameHeight}, ${Math.round(r.b.fps)} fps, ${r.b.bitrate} bit/s, lost ${r.b.packetsLost}, ` +
      `jitter ${r.b.jitter}; width changes ${flaps}: ${JSON.stringify(r.timeline)}${stallNote(r.history)}`);
    return r;
  };

  it('the publisher sends three simulcast rids over WHIP', step(async (t) => {
    pages.publisher = await suite.browser.page(`${suite.node.base}/`, 'publisher');
    const res = await pages.publisher.evaluate((room) => window.wave.publish(room, { codec: 'vp8' }), ROOM);
    assert.match(res.location, /\/whip\//);
    assert.deepEqual(res.rids, ['q', 'h', 'f']);
    const s = await until(
      pages.publisher,
      (s) => s.publish?.state === 'connected' && s.publish.layers.length === 3 && s.publish.layers.every((l) => l.framesEncoded > 0),
      20_000,
      'connected with 3 rids encoding',
    );
    t.diagnostic(`publisher connected with 3 rids encoding after ${s.elapsedMs} ms: ` +
      s.publish.layers.map((l) => `${l.rid} ${l.frameWidth}x${l.frameHeight} ql=${l.qualityLimitationReason}`).join(', '));
    assert.deepEqual(s.publish.layers.map((l) => l.rid).sort(), ['f', 'h', 'q']);

    // The node sees the publisher (at least the low rid at first).
    const t0 = Date.now();
    let room;
    while (Date.now() - t0 < 10_000) {
      room = (await suite.node.rooms()).find((r) => r.room === ROOM);
      const rids = room?.publishers[0]?.tracks.filter((tr) => tr.kind === 'video').map((tr) => tr.rid) ?? [];
      if (rids.includes('q')) break;
      await sleep(250);
    }
    t.diagnostic(`/v1/rooms publisher tracks: ${JSON.stringify(room?.publishers[0]?.tracks)}`);
    assert.equal(room?.publishers.length, 1, 'the node lists one publisher in the room');
    assert.ok(room.publishers[0].tracks.some((tr) => tr.kind === 'video' && tr.rid === 'q'), 'the node receives rid q');
  }));

  it('a WHEP viewer asking for the low layer decodes 320-wide frames', step(async (t) => {
    pages.low = await suite.browser.page(`${suite.node.base}/`, 'low viewer');
    const t0 = Date.now();
    watched.low = await pages.low.evaluate((room) => window.wave.watch(room, { layer: 'low' }), ROOM);
    assert.ok(watched.low.layerUrl, 'the WHEP answer links a layer URL');
    await decodingAt(t, pages.low, WIDTH.low, 15_000, 'low viewer (ms since watch())', { origin: t0 });
  }));

  it('a WHEP viewer asking for the high layer reaches 1280-wide frames', step(async (t) => {
    pages.high = await suite.browser.page(`${suite.node.base}/`, 'high viewer');
    const t0 = Date.now();
    watched.high = await pages.high.evaluate((room) => window.wave.watch(room, { layer: 'high' }), ROOM);
    const first = await until(pages.high, (s) => s.watch?.framesDecoded > 0, 15_000, 'first decoded frame');
    t.diagnostic(`high viewer: first frame ${Date.now() - t0} ms after watch() at ${first.watch.frameWidth}x${first.watch.frameHeight}`);
    await decodingAt(t, pages.high, WIDTH.high, RAMP_MS, 'high viewer (ms since watch())', { origin: t0 });
  }));

  it('switching the low viewer to high changes its width, framesDecoded stays monotonic', step(async (t) => {
    const before = await stats(pages.low);
    assert.equal(before.watch.frameWidth, WIDTH.low);
    const t0 = Date.now();
    const status = await pages.low.evaluate(() => window.wave.setLayer('high'));
    assert.equal(status, 200);
    const label = 'low viewer switched to high (ms since setLayer)';
    const r = await watchUntil(pages.low, label, RAMP_MS, { from: before.watch.framesDecoded, origin: t0 }, (w) => w.frameWidth === WIDTH.high);
    assert.ok(!r.failed, `${label}: frameWidth never reached ${WIDTH.high} within ${RAMP_MS} ms; ${r.failed}`);
    t.diagnostic(`${label}: ${WIDTH.high} wide after ${r.timeline.at(-1).ms} ms; framesDecoded ${before.watch.framesDecoded} -> ${r.last.framesDecoded}; widths ${JSON.stringify(r.timeline)}`);
    // Decoding goes on after the switch, still monotonic.
    const after = await watchUntil(pages.low, label, r.timeline.at(-1).ms + SAMPLE_MS + 1000, { from: r.last.framesDecoded, origin: t0 },
      (w, h) => h.at(-1).ms - r.timeline.at(-1).ms >= SAMPLE_MS && w);
    const delta = after.last?.framesDecoded - r.last.framesDecoded;
    t.diagnostic(`${label}: ${SAMPLE_MS} ms later framesDecoded Δ ${delta}, ${after.last?.frameWidth}x${after.last?.frameHeight}; widths ${JSON.stringify(after.timeline)}`);
    assert.ok(!after.failed && delta >= MIN_DELTA, `${label}: framesDecoded rose by ${delta} in the ${SAMPLE_MS} ms after the switch, ` +
      `want >= ${MIN_DELTA}${stallNote([...r.history, ...(after.history ?? [])])}; samples: ${brief([...r.history.slice(-4), ...(after.history ?? [])], 20)}`);
  }));

  it('DELETE ends the sessions: 200, then 404, and /v1/rooms forgets them', step(async (t) => {
    const del = (page, loc) => page.evaluate((l) => fetch(l, { method: 'DELETE' }).then((r) => r.status), loc);
    const sessionId = (loc) => new URL(loc).pathname.split('/').filter(Boolean).pop();

    for (const name of ['low', 'high']) {
      const page = pages[name];
      const loc = watched[name].location;
      const r = await page.evaluate(() => window.wave.stop('watch'));
      assert.equal(r.watch, 200, `${name} viewer: first DELETE`);
      assert.equal(await del(page, loc), 404, `${name} viewer: second DELETE on ${loc}`);
      const rooms = await suite.node.rooms();
      const listed = rooms.flatMap((room) => room.viewers).filter((v) => v.session === sessionId(loc));
      assert.deepEqual(listed, [], `${name} viewer still listed in /v1/rooms: ${JSON.stringify(rooms)}`);
    }

    const pubLoc = await pages.publisher.evaluate(() => window.wave.sessions.publish.location);
    const r = await pages.publisher.evaluate(() => window.wave.stop('publish'));
    assert.equal(r.publish, 200, 'publisher: first DELETE');
    assert.equal(await del(pages.publisher, pubLoc), 404, 'publisher: second DELETE');
    const rooms = await suite.node.rooms();
    const left = rooms.find((room) => room.room === ROOM);
    t.diagnostic(`/v1/rooms after the DELETEs: ${JSON.stringify(rooms)}`);
    assert.ok(!left || (left.publishers.length === 0 && left.viewers.length === 0), `room still populated: ${JSON.stringify(left)}`);
  }));

  it('SIGTERM stops the node within 2 s', step(async (t) => {
    const r = await suite.node.terminate(2000);
    t.diagnostic(`sfu exit after SIGTERM: ${JSON.stringify(r)}`);
    assert.ok(r, 'the node did not exit within 3 s of SIGTERM');
    assert.ok(r.ms <= 2000, `the node took ${r.ms} ms to exit`);
    assert.equal(r.code, 0, `exit code ${r.code} (signal ${r.signal})`);
  }));
});
