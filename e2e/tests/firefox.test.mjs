// Issue 17, the Firefox ESR row of the interop matrix: Debian's firefox-esr,
// driven by puppeteer-core over WebDriver BiDi, against the real `sfu`
// binary, with Chromium on the other side.
//
//   - Firefox publishes from the demo page with its defaults: the page asks
//     for H.264, Firefox has none to offer (H.264 in Firefox is Cisco's
//     OpenH264 plugin, downloaded at run time, which cannot be fetched here),
//     so the page offers VP8 with its three simulcast rids; a Chromium
//     viewer decodes the low layer, then the high one after setLayer.
//   - Firefox watches a Chromium VP8 publisher over WHEP and decodes it.
//   - Firefox asking to watch a Chromium H.264 publisher is refused: 406,
//     and `wave.watch` rejects with the reason naming both codec sets.
//   - The DTLS version, cipher and SRTP profile Firefox negotiated with the
//     node (transport stats) are printed; the node speaks DTLS 1.2.
//
// Every check is on decoded (or encoded) frames from getStats, never on logs.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { browserSuite, launchFirefox, stats, until } from './helpers.mjs';

const TAG = randomBytes(4).toString('hex');
const FROM_FIREFOX = `ff-pub-${TAG}`;
const FROM_CHROMIUM = `ff-watch-${TAG}`;
const FROM_CHROMIUM_H264 = `ff-h264-${TAG}`;
// Widths of Firefox's layers for the 1280x720 fake camera (rids q/h/f,
// scaleResolutionDownBy 4/2/1).
const WIDTH = { low: 320, high: 1280 };
// Decoding means framesDecoded up by at least MIN_DELTA over SAMPLE_MS.
const SAMPLE_MS = 1500;
const MIN_DELTA = 10;

describe(`Firefox ESR publishes and watches (rooms ${FROM_FIREFOX}, ${FROM_CHROMIUM}, ${FROM_CHROMIUM_H264})`, { timeout: 60_000 }, () => {
  const suite = browserSuite();
  const { pages, step } = suite;
  let firefox;

  before(async () => {
    firefox = await launchFirefox();
  });
  after(async () => {
    await firefox?.close();
  });

  // Polls until `page` decodes video (at `width` when given): two samples at
  // least SAMPLE_MS apart, at that width, framesDecoded up by MIN_DELTA.
  const decoding = async (page, { width, ms, origin = Date.now() }) => {
    let start = null;
    const widths = [];
    return until(
      page,
      (s) => {
        const w = s.watch;
        if (!w) return false;
        if (widths.at(-1)?.w !== w.frameWidth) widths.push({ ms: Date.now() - origin, w: w.frameWidth, dec: w.framesDecoded });
        const at = w.state === 'connected' && w.framesDecoded > 0 && (width ? w.frameWidth === width : w.frameWidth > 0);
        if (!at) {
          start = null;
          return false;
        }
        const now = Date.now();
        if (!start) {
          start = { now, ...w };
          return false;
        }
        if (now - start.now < SAMPLE_MS) return false;
        if (w.framesDecoded - start.framesDecoded >= MIN_DELTA) {
          Object.assign(s, { from: start, widths, sinceOrigin: now - origin });
          return true;
        }
        start = { now, ...w };
        return false;
      },
      ms,
      `framesDecoded rising by ${MIN_DELTA} over ${SAMPLE_MS} ms${width ? ` at width ${width}` : ''}`,
    );
  };
  const decoded = (s) =>
    `framesDecoded ${s.from.framesDecoded} -> ${s.watch.framesDecoded} at ${s.watch.frameWidth}x${s.watch.frameHeight}, ` +
    `${Math.round(s.watch.fps)} fps, lost ${s.watch.packetsLost}; widths (ms, width, framesDecoded) ${JSON.stringify(s.widths)}`;

  // The transport report of a page's session: Firefox fills tlsVersion,
  // dtlsCipher and srtpCipher once DTLS is up.
  const transport = (page, kind) =>
    page.evaluate(async (k) => {
      let out = null;
      (await window.wave.sessions[k].pc.getStats()).forEach((r) => {
        if (r.type === 'transport') out = r;
      });
      return out;
    }, kind);

  it('Firefox publishes the demo page\'s simulcast: VP8 (it has no H.264), rids q/h/f encoding', step(async (t) => {
    t.diagnostic(`${firefox.version} (puppeteer-core over WebDriver BiDi)`);
    pages.ffPublisher = await firefox.page(`${suite.node.base}/`, 'firefox publisher');
    const caps = await pages.ffPublisher.evaluate(() => RTCRtpSender.getCapabilities('video').codecs.map((c) => c.mimeType));
    t.diagnostic(`Firefox video send codecs: ${[...new Set(caps)].join(', ')}`);
    assert.ok(!caps.some((c) => /h264/i.test(c)),
      'Firefox lists H.264 (OpenH264 installed?): the README row says it publishes VP8 only');

    const t0 = Date.now();
    // The page's defaults: codec h264, simulcast on.
    const res = await pages.ffPublisher.evaluate((room) => window.wave.publish(room), FROM_FIREFOX);
    assert.equal(res.codec, 'vp8', 'the page falls back to VP8 in a browser without H.264');
    assert.deepEqual(res.rids, ['q', 'h', 'f']);
    const s = await until(
      pages.ffPublisher,
      (s) => s.publish?.state === 'connected' && s.publish.layers.length === 3 && s.publish.layers.every((l) => l.framesEncoded > 0),
      15_000,
      'connected with 3 rids encoding',
    );
    t.diagnostic(`Firefox publisher connected, 3 rids encoding, ${Date.now() - t0} ms after publish(): ` +
      s.publish.layers.map((l) => `${l.rid} ${l.codec} ${l.frameWidth}x${l.frameHeight} (${l.framesEncoded} frames)`).join(', '));
    assert.ok(s.publish.layers.every((l) => l.codec === 'video/VP8'), `codecs: ${JSON.stringify(s.publish.layers)}`);
    assert.deepEqual(s.publish.layers.map((l) => l.frameWidth), [WIDTH.low, 640, WIDTH.high]);

    // The node hears all three rids.
    let tracks = [];
    for (const t1 = Date.now(); Date.now() - t1 < 10_000; await sleep(250)) {
      const room = (await suite.node.rooms()).find((r) => r.room === FROM_FIREFOX);
      tracks = room?.publishers[0]?.tracks ?? [];
      if (tracks.filter((tr) => tr.kind === 'video').length === 3) break;
    }
    t.diagnostic(`/v1/rooms publisher tracks: ${JSON.stringify(tracks)}`);
    assert.deepEqual(tracks.filter((tr) => tr.kind === 'video').map((tr) => `${tr.rid} ${tr.codec}`).sort(), ['f VP8', 'h VP8', 'q VP8']);
  }));

  it('Firefox negotiated DTLS 1.2 with the node (transport stats)', step(async (t) => {
    const tr = await transport(pages.ffPublisher, 'publish');
    t.diagnostic(`Firefox transport: tlsVersion ${tr?.tlsVersion} (FEFD = DTLS 1.2, FEFC = DTLS 1.3), dtlsCipher ${tr?.dtlsCipher}, ` +
      `srtpCipher ${tr?.srtpCipher}, dtlsRole ${tr?.dtlsRole}, dtlsState ${tr?.dtlsState}`);
    assert.equal(tr?.dtlsState, 'connected', `transport: ${JSON.stringify(tr)}`);
    // The node's OpenSSL 3.0 has no DTLS 1.3: Firefox offers it, the node answers 1.2.
    assert.equal(tr.tlsVersion, 'FEFD', `Firefox negotiated ${tr.tlsVersion}, not DTLS 1.2: update README's DTLS paragraph`);
    assert.match(tr.dtlsCipher ?? '', /^TLS_ECDHE_/, 'an ECDHE cipher suite');
    assert.match(tr.srtpCipher ?? '', /^SRTP_/, 'an SRTP profile');
  }));

  it('a Chromium viewer decodes Firefox\'s low layer, then its high layer after setLayer', step(async (t) => {
    pages.chromiumViewer = await suite.browser.page(`${suite.node.base}/`, 'chromium viewer');
    const t0 = Date.now();
    const w = await pages.chromiumViewer.evaluate((room) => window.wave.watch(room, { layer: 'low' }), FROM_FIREFOX);
    assert.ok(w.layerUrl, 'the WHEP answer links a layer URL');
    const low = await decoding(pages.chromiumViewer, { width: WIDTH.low, ms: 15_000, origin: t0 });
    t.diagnostic(`Chromium viewer, layer low, ${low.sinceOrigin} ms after watch(): ${decoded(low)}`);

    const t1 = Date.now();
    assert.equal(await pages.chromiumViewer.evaluate(() => window.wave.setLayer('high')), 200);
    const high = await decoding(pages.chromiumViewer, { width: WIDTH.high, ms: 20_000, origin: t1 });
    t.diagnostic(`Chromium viewer, layer high, ${high.sinceOrigin} ms after setLayer(): ${decoded(high)}`);
    assert.ok(high.watch.framesDecoded > low.watch.framesDecoded, 'framesDecoded went on rising across the switch');
  }));

  it('Firefox watches a Chromium VP8 publisher over WHEP and decodes it', step(async (t) => {
    pages.chromiumPublisher = await suite.browser.page(`${suite.node.base}/`, 'chromium publisher');
    // VP8: Firefox offers VP8, VP9 and AV1 to receive, no H.264 (no OpenH264).
    const pub = await pages.chromiumPublisher.evaluate((room) => window.wave.publish(room, { codec: 'vp8' }), FROM_CHROMIUM);
    assert.equal(pub.codec, 'vp8');
    await until(pages.chromiumPublisher, (s) => s.publish?.state === 'connected' && s.publish.layers.some((l) => l.framesEncoded > 0),
      15_000, 'Chromium publisher connected');

    pages.ffViewer = await firefox.page(`${suite.node.base}/`, 'firefox viewer');
    // Firefox gathers its loopback candidate only for a page with camera
    // access (see FIREFOX_PREFS): the viewer page opens the fake camera
    // first, and keeps it open while it gathers.
    await pages.ffViewer.evaluate(() => navigator.mediaDevices.getUserMedia({ video: true }).then((s) => { window.waveTestCamera = s; }));
    const t0 = Date.now();
    const w = await pages.ffViewer.evaluate((room) => window.wave.watch(room), FROM_CHROMIUM);
    assert.match(w.location, /\/whep\//);
    const answer = await pages.ffViewer.evaluate(() => window.wave.sessions.watch.pc.remoteDescription.sdp);
    const videoCodecs = answer.split('m=video')[1].match(/a=rtpmap:\d+ [^/]+/g).map((l) => l.split(' ')[1]);
    t.diagnostic(`WHEP answer's video codecs: ${videoCodecs.join(', ')}`);
    assert.ok(videoCodecs.includes('VP8'), 'the answer carries VP8');

    const s = await decoding(pages.ffViewer, { ms: 15_000, origin: t0 });
    t.diagnostic(`Firefox viewer, ${s.sinceOrigin} ms after watch(): ${decoded(s)}`);
    const codec = await pages.ffViewer.evaluate(async () => {
      const report = await window.wave.sessions.watch.pc.getStats();
      let mime = null;
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video') mime = report.get(r.codecId)?.mimeType ?? null;
      });
      return mime;
    });
    t.diagnostic(`Firefox decodes ${codec}`);
    assert.equal(codec, 'video/VP8');
    const tr = await transport(pages.ffViewer, 'watch');
    t.diagnostic(`Firefox viewer transport: tlsVersion ${tr?.tlsVersion}, dtlsCipher ${tr?.dtlsCipher}, srtpCipher ${tr?.srtpCipher}`);
    assert.equal(tr?.tlsVersion, 'FEFD');
  }));

  it('Firefox asking to watch a Chromium H.264 publisher gets 406 naming both codec sets', step(async (t) => {
    pages.chromiumH264 = await suite.browser.page(`${suite.node.base}/`, 'chromium H.264 publisher');
    const pub = await pages.chromiumH264.evaluate((room) => window.wave.publish(room, { codec: 'h264' }), FROM_CHROMIUM_H264);
    assert.equal(pub.codec, 'h264');
    // The node has seen the H.264 packets (not only the negotiation).
    let tracks = [];
    for (const t1 = Date.now(); Date.now() - t1 < 15_000; await sleep(250)) {
      const room = (await suite.node.rooms()).find((r) => r.room === FROM_CHROMIUM_H264);
      tracks = room?.publishers[0]?.tracks ?? [];
      if (tracks.some((tr) => tr.kind === 'video' && tr.codec === 'H264')) break;
    }
    assert.ok(tracks.some((tr) => tr.kind === 'video' && tr.codec === 'H264'), `tracks: ${JSON.stringify(tracks)}`);

    pages.ffRefused = await firefox.page(`${suite.node.base}/`, 'firefox viewer of H.264');
    await pages.ffRefused.evaluate(() => navigator.mediaDevices.getUserMedia({ video: true }).then((s) => { window.waveTestCamera = s; }));
    const refused = await pages.ffRefused.evaluate(
      (room) => window.wave.watch(room).then((w) => `answered: ${JSON.stringify(w)}`, (e) => e.message),
      FROM_CHROMIUM_H264,
    );
    t.diagnostic(`wave.watch rejected: ${refused}`);
    assert.match(refused, /^406: not acceptable: the room's video is H264; the offer has /);
    const offered = refused.split('the offer has ')[1].split(', ');
    assert.ok(offered.includes('VP8') && !offered.includes('H264'), `offered: ${offered}`);
    assert.equal(await pages.ffRefused.evaluate(() => window.wave.sessions.watch), null, 'no WHEP session kept');
    await pages.ffRefused.evaluate(() => window.waveTestCamera?.getTracks().forEach((tr) => tr.stop()));
    const room = (await suite.node.rooms()).find((r) => r.room === FROM_CHROMIUM_H264);
    assert.deepEqual(room?.viewers, [], `room: ${JSON.stringify(room)}`);
  }));

  it('no DTLS handshake failed, and the sessions end with DELETE', step(async (t) => {
    const failures = await suite.node.metrics(/^wave_dtls_failures_total/);
    t.diagnostic(failures.replace(/\n/g, '; '));
    const counts = failures.split('\n').filter(Boolean).map((l) => Number(l.split(' ').pop()));
    assert.ok(counts.length > 0 && counts.every((n) => n === 0), failures);
    for (const [page, kind] of [[pages.ffViewer, 'watch'], [pages.chromiumViewer, 'watch'], [pages.chromiumPublisher, 'publish'], [pages.chromiumH264, 'publish'], [pages.ffPublisher, 'publish']]) {
      const r = await page.evaluate((k) => window.wave.stop(k), kind);
      assert.equal(r[kind], 200, `${page.waveName}: DELETE`);
    }
    await pages.ffViewer.evaluate(() => window.waveTestCamera?.getTracks().forEach((tr) => tr.stop()));
    const rooms = await suite.node.rooms();
    const left = rooms.filter((r) => r.publishers.length || r.viewers.length);
    assert.deepEqual(left, [], `rooms still populated: ${JSON.stringify(rooms)}`);
  }));
});
