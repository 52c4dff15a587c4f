// WAVE demo page: WHIP publish with 3-layer simulcast, WHEP watch, live stats.
// Plain JS, no build step.
//
// Programmatic API (browser tests drive the page through it; every call
// returns a promise and rejects with an Error whose message carries the HTTP
// status and the server's problem+json detail):
//
//   wave.publish(room, { token?, width = 1280, height = 720, simulcast = true, audio = true,
//                        codec = 'h264'|'vp8', iceTransportPolicy?: 'all'|'relay', iceServers? })
//       -> { location, etag, rids, codec, iceServers }  camera+mic over WHIP, rids q/h/f; `codec` is
//          the one offered (H.264 by default so the node can package the room as LL-HLS; VP8 where
//          the browser has no H.264)
//   wave.watch(room, { token?, layer?: 'low'|'mid'|'high', publisher?, iceTransportPolicy?, iceServers? })
//       -> { location, etag, layerUrl, iceServers }  WHEP viewer; `layer` and `publisher` become query parameters
//   wave.setLayer(layer: 'low'|'mid'|'high'|'auto')
//       -> HTTP status (200)           POSTs to the layer URL from the WHEP Link header
//   wave.stop(which?: 'publish'|'watch')
//       -> { publish?: status, watch?: status }  DELETE the session(s), close the peer connection(s)
//   wave.stats()
//       -> { publish: { state, path, layers: [{ rid, codec, frameWidth, frameHeight, framesEncoded, bitrate,
//                                                qualityLimitationReason, pliCount, encoder }] } | null,
//            watch: { state, path, frameWidth, frameHeight, bitrate, packetsLost, framesDecoded,
//                     keyFramesDecoded, framesReceived, packetsReceived, freezeCount,
//                     nackCount, pliCount, fps, jitter, jitterBufferDelay,
//                     jitterBufferEmittedCount, audioSamples } | null }
//       `path` is the selected candidate pair: { local, remote, protocol, relayProtocol, url }
//       (`local`/`remote` are candidate types: host, srflx, prflx, relay), null before one is selected.
//
// ICE servers come from the server, the way RFC 9725 §4.6 describes: the
// offer is POSTed before ICE gathering starts, the 201's
// `Link: <turn:...>; rel="ice-server"` values go to setConfiguration, then
// setLocalDescription gathers with them (TURN included) and the candidates
// follow in one trickle PATCH (If-Match: the ETag) once gathering completes.
// `iceServers` overrides the Link values (a client's own TURN servers);
// `iceTransportPolicy: 'relay'` keeps only TURN candidates.
// `bundlePolicy: 'max-bundle'`.
'use strict';

(() => {
  const SIMULCAST = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ];
  const GATHER_TIMEOUT_MS = 5000;

  // One publish session and one watch session at a time.
  const sessions = { publish: null, watch: null };
  // Previous byte counters per stats id, for bitrates.
  const previous = new Map();

  const $ = (id) => document.getElementById(id);

  function log(msg, isError = false) {
    const el = $('log');
    if (!el) return;
    const line = document.createElement('span');
    if (isError) line.className = 'error';
    line.textContent = `${new Date().toLocaleTimeString()} ${msg}\n`;
    el.append(line);
    el.scrollTop = el.scrollHeight;
  }

  function authHeaders(token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function problem(res) {
    let detail = res.statusText;
    try {
      const body = await res.text();
      try {
        detail = JSON.parse(body).detail ?? body;
      } catch {
        detail = body || detail;
      }
    } catch {
      // keep statusText
    }
    return new Error(`${res.status}: ${detail}`);
  }

  // RFC 8288 Link header (possibly several values joined by ", ").
  function parseLinks(header, base) {
    const links = [];
    if (!header) return links;
    const re = /<([^>]*)>((?:\s*;\s*[^;,=]+(?:=(?:"(?:[^"\\]|\\.)*"|[^;,]*))?)*)/g;
    let m;
    while ((m = re.exec(header))) {
      const params = {};
      for (const p of m[2].matchAll(/;\s*([^;,=\s]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,]*)))?/g)) {
        params[p[1].toLowerCase()] = (p[2] ?? p[3] ?? '').replace(/\\(.)/g, '$1').trim();
      }
      links.push({ url: new URL(m[1], base).href, ...params });
    }
    return links;
  }

  function waitForGathering(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState !== 'complete') return;
        pc.removeEventListener('icegatheringstatechange', done);
        clearTimeout(timer);
        resolve();
      };
      // Send what we have if a STUN server never answers.
      const timer = setTimeout(() => {
        pc.removeEventListener('icegatheringstatechange', done);
        resolve();
      }, GATHER_TIMEOUT_MS);
      pc.addEventListener('icegatheringstatechange', done);
    });
  }

  // `rel="ice-server"` links as RTCIceServer values (RFC 9725 §4.6).
  function iceServersOf(links) {
    return links
      .filter((l) => l.rel === 'ice-server')
      .map((l) => {
        // parseLinks resolved the URL against the page; take the raw URI back.
        const server = { urls: l.url.replace(/^(stuns?|turns?):\/*/, '$1:') };
        if (l.username !== undefined) server.username = l.username;
        if (l.credential !== undefined) server.credential = l.credential;
        return server;
      });
  }

  // POST the offer before gathering, configure the ICE servers the 201
  // names, gather, apply the answer, trickle the candidates. Returns the
  // session record.
  async function negotiate(pc, path, token, iceServers) {
    // Absolute, so that Location and Link values resolve against it.
    const url = new URL(path, window.location.href).href;
    const offer = await pc.createOffer();
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...authHeaders(token) },
      body: offer.sdp,
    });
    if (res.status !== 201) throw await problem(res);
    const location = res.headers.get('Location');
    if (!location) throw new Error('201 without Location');
    const links = parseLinks(res.headers.get('Link'), url);
    const session = {
      pc,
      token,
      location: new URL(location, url).href,
      etag: res.headers.get('ETag'),
      links,
      iceServers: iceServers ?? iceServersOf(links),
    };
    const answer = await res.text();
    if (session.iceServers.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: session.iceServers });
    await pc.setLocalDescription(offer);
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    trickle(session).catch((e) => log(`trickle: ${e.message}`, true));
    return session;
  }

  // Sends every local candidate in one RFC 8840 fragment once gathering is
  // complete (max-bundle: the first m-section carries them all).
  async function trickle(session) {
    const { pc } = session;
    await waitForGathering(pc);
    if (pc.signalingState === 'closed') return;
    const sdp = pc.localDescription.sdp;
    const lines = sdp.split(/\r?\n/);
    const first = lines.findIndex((l) => l.startsWith('m='));
    if (first < 0) return;
    const end = lines.findIndex((l, i) => i > first && l.startsWith('m='));
    const section = lines.slice(first, end < 0 ? undefined : end);
    const candidates = section.filter((l) => l.startsWith('a=candidate:'));
    const attr = (name) => lines.find((l) => l.startsWith(`a=${name}:`));
    const frag = [
      attr('ice-ufrag'),
      attr('ice-pwd'),
      section[0],
      section.find((l) => l.startsWith('a=mid:')),
      ...candidates,
      'a=end-of-candidates',
    ];
    if (frag.some((l) => !l)) return;
    const res = await fetch(session.location, {
      method: 'PATCH',
      headers: {
        'Content-Type': 'application/trickle-ice-sdpfrag',
        'If-Match': session.etag ?? '*',
        ...authHeaders(session.token),
      },
      body: `${frag.join('\r\n')}\r\n`,
    });
    if (!res.ok) throw await problem(res);
    log(`sent ${candidates.length} candidates`);
  }

  // Offers one video codec alone (plus the repair codecs): an answerer may
  // pick by its own codec order and ignore the offer's, so ordering the
  // wanted codec first is not enough to get it. H.264 is what the node
  // packages as LL-HLS; only packetization-mode=1 (FU-A, needed above one
  // MTU per NAL), constrained baseline first. Returns the codec offered.
  function preferCodec(transceiver, codec) {
    if (!transceiver.setCodecPreferences || !window.RTCRtpReceiver?.getCapabilities) return null;
    // setCodecPreferences takes receiver capabilities in current browsers.
    const caps = RTCRtpReceiver.getCapabilities('video')?.codecs ?? [];
    const h264 = caps
      .filter((c) => /video\/h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine ?? ''))
      .sort((a, b) => h264Rank(a) - h264Rank(b));
    const vp8 = caps.filter((c) => /video\/vp8/i.test(c.mimeType));
    const repair = caps.filter((c) => /video\/(rtx|red|ulpfec|flexfec)/i.test(c.mimeType));
    let chosen = codec === 'vp8' ? vp8 : h264;
    let name = codec === 'vp8' ? 'vp8' : 'h264';
    if (!chosen.length) {
      log(`this browser cannot send ${name}; offering ${name === 'vp8' ? 'H.264' : 'VP8'}`, true);
      [chosen, name] = name === 'vp8' ? [h264, 'h264'] : [vp8, 'vp8'];
    }
    if (!chosen.length) return null;
    try {
      transceiver.setCodecPreferences([...chosen, ...repair]);
      return name;
    } catch (e) {
      log(`setCodecPreferences: ${e.message}`);
      return null;
    }
  }

  // profile-level-id order: constrained baseline (42e0), baseline (4200), the rest.
  function h264Rank(c) {
    const plid = /profile-level-id=([0-9a-f]{4})/i.exec(c.sdpFmtpLine ?? '')?.[1]?.toLowerCase();
    return plid === '42e0' ? 0 : plid === '4200' ? 1 : 2;
  }

  async function publish(room, opts = {}) {
    const {
      token = '',
      width = 1280,
      height = 720,
      simulcast = true,
      audio = true,
      codec = 'h264',
      iceTransportPolicy = 'all',
      iceServers,
    } = opts;
    if (sessions.publish) await stop('publish');
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio,
        video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } },
      });
    } catch (e) {
      log(`camera: ${e.message}`, true);
      throw e;
    }
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceTransportPolicy });
    try {
      for (const track of stream.getAudioTracks()) {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
      const video = stream.getVideoTracks()[0];
      let offered = null;
      if (video) {
        const t = pc.addTransceiver(video, {
          direction: 'sendonly',
          streams: [stream],
          sendEncodings: simulcast ? SIMULCAST.map((e) => ({ ...e })) : undefined,
        });
        offered = preferCodec(t, codec);
      }
      const session = await negotiate(pc, `/whip/${encodeURIComponent(room)}`, token, iceServers);
      session.stream = stream;
      sessions.publish = session;
      const preview = $('publish-video');
      if (preview) preview.srcObject = stream;
      log(`publishing to ${room}: ${session.location}`);
      setButtons();
      return {
        location: session.location,
        etag: session.etag,
        rids: simulcast ? SIMULCAST.map((e) => e.rid) : [],
        codec: offered,
        iceServers: session.iceServers,
      };
    } catch (e) {
      pc.close();
      stream.getTracks().forEach((t) => t.stop());
      log(`publish ${room}: ${e.message}`, true);
      throw e;
    }
  }

  async function watch(room, opts = {}) {
    const { token = '', layer, publisher, iceTransportPolicy = 'all', iceServers } = opts;
    if (sessions.watch) await stop('watch');
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceTransportPolicy });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const media = new MediaStream();
    pc.ontrack = (e) => {
      media.addTrack(e.track);
      const v = $('watch-video');
      if (v && v.srcObject !== media) {
        v.srcObject = media;
        v.play().catch(() => {});
      }
    };
    const query = new URLSearchParams();
    if (layer && layer !== 'auto') query.set('layer', layer);
    if (publisher) query.set('publisher', publisher);
    const qs = query.toString();
    try {
      const session = await negotiate(
        pc,
        `/whep/${encodeURIComponent(room)}${qs ? `?${qs}` : ''}`,
        token,
        iceServers,
      );
      const layerLink = session.links.find((l) => l.rel === 'urn:ietf:params:whep:ext:core:layer');
      session.layerUrl = layerLink?.url ?? null;
      sessions.watch = session;
      log(`watching ${room}: ${session.location}`);
      setButtons();
      return {
        location: session.location,
        etag: session.etag,
        layerUrl: session.layerUrl,
        iceServers: session.iceServers,
      };
    } catch (e) {
      pc.close();
      log(`watch ${room}: ${e.message}`, true);
      throw e;
    }
  }

  async function setLayer(layer) {
    const s = sessions.watch;
    if (!s) throw new Error('not watching');
    if (!s.layerUrl) throw new Error('the server did not offer layer selection');
    const body = layer === 'auto' || !layer ? {} : { maxLayer: layer };
    const res = await fetch(s.layerUrl, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders(s.token) },
      body: JSON.stringify(body),
    });
    if (!res.ok) throw await problem(res);
    log(`layer ${layer}`);
    return res.status;
  }

  async function stop(which) {
    const kinds = which ? [which] : ['publish', 'watch'];
    const result = {};
    for (const kind of kinds) {
      const s = sessions[kind];
      if (!s) continue;
      sessions[kind] = null;
      try {
        const res = await fetch(s.location, { method: 'DELETE', headers: authHeaders(s.token) });
        result[kind] = res.status;
      } catch (e) {
        result[kind] = 0;
        log(`DELETE ${kind}: ${e.message}`, true);
      }
      s.pc.close();
      s.stream?.getTracks().forEach((t) => t.stop());
      const v = $(`${kind}-video`);
      if (v) v.srcObject = null;
      log(`stopped ${kind} (${result[kind]})`);
    }
    setButtons();
    return result;
  }

  // Bits per second since the previous sample at least 500 ms older, so that
  // a test polling stats() beside the page's own timer does not skew it.
  function rate(id, bytes, timestamp) {
    const prev = previous.get(id);
    if (prev && timestamp - prev.timestamp < 500) return prev.bps;
    const bps = prev ? Math.round(((bytes - prev.bytes) * 8 * 1000) / (timestamp - prev.timestamp)) : 0;
    previous.set(id, { bytes, timestamp, bps });
    return bps;
  }

  // The selected candidate pair of a stats report, by candidate type.
  function selectedPath(report) {
    let pairId = null;
    report.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
    });
    const pair = pairId && report.get(pairId);
    if (!pair) return null;
    const local = report.get(pair.localCandidateId) ?? {};
    const remote = report.get(pair.remoteCandidateId) ?? {};
    return {
      local: local.candidateType ?? null,
      remote: remote.candidateType ?? null,
      protocol: local.protocol ?? null,
      relayProtocol: local.relayProtocol ?? null,
      url: local.url ?? null,
    };
  }

  async function publishStats() {
    const s = sessions.publish;
    if (!s) return null;
    const layers = [];
    const report = await s.pc.getStats();
    report.forEach((r) => {
      if (r.type !== 'outbound-rtp' || r.kind !== 'video') return;
      layers.push({
        rid: r.rid ?? null,
        codec: report.get(r.codecId)?.mimeType ?? null,
        encoder: r.encoderImplementation ?? null,
        frameWidth: r.frameWidth ?? 0,
        frameHeight: r.frameHeight ?? 0,
        framesEncoded: r.framesEncoded ?? 0,
        bitrate: rate(r.id, r.bytesSent ?? 0, r.timestamp),
        qualityLimitationReason: r.qualityLimitationReason ?? null,
        pliCount: r.pliCount ?? 0,
      });
    });
    layers.sort((a, b) => (a.frameWidth - b.frameWidth) || String(a.rid).localeCompare(String(b.rid)));
    return { state: s.pc.connectionState, path: selectedPath(report), layers };
  }

  async function watchStats() {
    const s = sessions.watch;
    if (!s) return null;
    const report = await s.pc.getStats();
    const out = {
      state: s.pc.connectionState,
      path: selectedPath(report),
      frameWidth: 0,
      frameHeight: 0,
      bitrate: 0,
      packetsLost: 0,
      framesDecoded: 0,
      keyFramesDecoded: 0,
      framesReceived: 0,
      packetsReceived: 0,
      freezeCount: 0,
      nackCount: 0,
      pliCount: 0,
      fps: 0,
      jitter: 0,
      jitterBufferDelay: 0,
      jitterBufferEmittedCount: 0,
      audioSamples: 0,
    };
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      if (r.kind === 'video') {
        Object.assign(out, {
          frameWidth: r.frameWidth ?? 0,
          frameHeight: r.frameHeight ?? 0,
          bitrate: rate(r.id, r.bytesReceived ?? 0, r.timestamp),
          packetsLost: r.packetsLost ?? 0,
          framesDecoded: r.framesDecoded ?? 0,
          keyFramesDecoded: r.keyFramesDecoded ?? 0,
          framesReceived: r.framesReceived ?? 0,
          packetsReceived: r.packetsReceived ?? 0,
          freezeCount: r.freezeCount ?? 0,
          nackCount: r.nackCount ?? 0,
          pliCount: r.pliCount ?? 0,
          fps: r.framesPerSecond ?? 0,
          jitter: r.jitter ?? 0,
          jitterBufferDelay: r.jitterBufferDelay ?? 0,
          jitterBufferEmittedCount: r.jitterBufferEmittedCount ?? 0,
        });
      } else if (r.kind === 'audio') {
        out.audioSamples = r.totalSamplesReceived ?? 0;
      }
    });
    return out;
  }

  async function stats() {
    const [publish, watch] = await Promise.all([publishStats(), watchStats()]);
    return { publish, watch };
  }

  const kbps = (bps) => `${Math.round(bps / 1000)} kbit/s`;

  function renderStats({ publish, watch }) {
    const p = $('publish-stats');
    if (p) {
      p.textContent = publish
        ? [`connection: ${publish.state}`]
            .concat(
              publish.layers.map(
                (l) =>
                  `rid ${l.rid ?? '-'}: ${l.codec?.replace(/^video\//, '') ?? ''} ${l.frameWidth}x${l.frameHeight} ${kbps(l.bitrate)}` +
                  `${l.qualityLimitationReason && l.qualityLimitationReason !== 'none' ? ` (limited: ${l.qualityLimitationReason})` : ''}`,
              ),
            )
            .join('\n')
        : 'not publishing';
    }
    const w = $('watch-stats');
    if (w) {
      w.textContent = watch
        ? [
            `connection: ${watch.state}`,
            `video: ${watch.frameWidth}x${watch.frameHeight} @ ${Math.round(watch.fps)} fps, ${kbps(watch.bitrate)}`,
            `frames decoded: ${watch.framesDecoded}, packets lost: ${watch.packetsLost}`,
          ].join('\n')
        : 'not watching';
    }
  }

  function setButtons() {
    const set = (id, disabled) => {
      const b = $(id);
      if (b) b.disabled = disabled;
    };
    set('publish-start', !!sessions.publish);
    set('publish-stop', !sessions.publish);
    set('watch-start', !!sessions.watch);
    set('watch-stop', !sessions.watch);
  }

  function wireUi() {
    const params = new URLSearchParams(location.search);
    for (const form of ['publish-form', 'watch-form']) {
      const f = $(form);
      if (!f) continue;
      if (params.get('room')) f.room.value = params.get('room');
      if (params.get('token')) f.token.value = params.get('token');
    }
    $('publish-form')?.addEventListener('submit', (e) => {
      e.preventDefault();
      const f = e.target;
      publish(f.room.value, { token: f.token.value.trim(), codec: f.codec?.value }).catch(() => {});
    });
    $('publish-stop')?.addEventListener('click', () => stop('publish'));
    $('watch-form')?.addEventListener('submit', (e) => {
      e.preventDefault();
      const f = e.target;
      watch(f.room.value, { token: f.token.value.trim(), layer: f.layer.value }).catch(() => {});
    });
    $('watch-stop')?.addEventListener('click', () => stop('watch'));
    $('watch-layer')?.addEventListener('change', (e) => {
      if (sessions.watch) setLayer(e.target.value).catch((err) => log(`layer: ${err.message}`, true));
    });
    setInterval(() => {
      if (sessions.publish || sessions.watch) stats().then(renderStats).catch(() => {});
      else renderStats({ publish: null, watch: null });
    }, 1000);
    // Tell the server when the tab goes away.
    window.addEventListener('pagehide', () => {
      for (const s of [sessions.publish, sessions.watch]) {
        if (s) fetch(s.location, { method: 'DELETE', headers: authHeaders(s.token), keepalive: true });
      }
    });
  }

  window.wave = { publish, watch, setLayer, stop, stats, sessions };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wireUi);
  else wireUi();
})();
