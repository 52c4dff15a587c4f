// WAVE demo page, LL-HLS player: plays a room's `/hls/{room}/index.m3u8`
// (the node packages every room with an H.264 publisher) with hls.js, or
// with the browser's own HLS where that is Safari. hls.js is not part of
// the page: the node serves it from its installed npm package at
// /vendor/hls.js/ (`sfu serve --hlsjs-dir`); when it is absent the panel
// says so with the node's reason.
//
// Programmatic API, beside app.js's (the browser tests drive it):
//
//   wave.playHls(room, { engine = 'auto'|'hlsjs'|'native', config?, token? })
//       -> { engine, url, version, config, levels: [{ width, height, bitrate, codecs }] }
//          resolves once the multivariant playlist is parsed; `config` is merged over
//          HLSJS_DEFAULTS (low-latency mode, catch-up up to 1.5x); `token` goes on the URL as
//          `?token=`: on a secured node a subscribe token for the room (what the page's token
//          field holds for WHEP), or a signed-URL token
//   wave.stopHls()
//   wave.hlsStats()
//       -> { engine, url, currentTime, paused, readyState, width, height, totalVideoFrames,
//            droppedVideoFrames, bufferAheadS, playbackRate, waiting, stalls, longestStallMs,
//            latency, targetLatency, drift, playingDate, sincePlayingDateMs, levels, currentLevel,
//            loadLevel, partLoads, fragLoads, blockingReloads, errors } | null
//       `latency` is hls.js's (seconds behind the live edge); `sincePlayingDateMs` is
//       Date.now() - the PROGRAM-DATE-TIME of the frame on screen, i.e. glass to glass
//       when the node stamps PDT with the publisher's capture time (RTCP SR).
'use strict';

(() => {
  const HLSJS_URL = '/vendor/hls.js/hls.min.js';
  const MANIFEST_TIMEOUT_MS = 15_000;
  const MAX_ERRORS = 50;
  // lowLatencyMode starts playback PART-HOLD-BACK behind the live edge; with
  // hls.js's default maxLiveSyncPlaybackRate (1) it never moves back towards
  // that target after a slow start or a stall, which cost ~0.4 s of latency
  // here (npm run bench:hls-latency: 1.71 s vs 1.3 s glass to glass).
  const HLSJS_DEFAULTS = { lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5 };

  const $ = (id) => document.getElementById(id);
  const log = (msg, isError = false) => {
    const el = $('log');
    if (!el) return;
    const line = document.createElement('span');
    if (isError) line.className = 'error';
    line.textContent = `${new Date().toLocaleTimeString()} hls: ${msg}\n`;
    el.append(line);
    el.scrollTop = el.scrollHeight;
  };

  // The one player on the page: { engine, url, video, hls?, counters }.
  let player = null;
  let hlsjsLoading = null;

  function setStatus(text, isError = false) {
    const el = $('hls-status');
    if (!el) return;
    el.textContent = text;
    el.classList.toggle('error', isError);
  }

  // Loads hls.js once; on failure asks the node why (its problem+json detail).
  function loadHlsJs() {
    if (window.Hls) return Promise.resolve(window.Hls);
    if (hlsjsLoading) return hlsjsLoading;
    hlsjsLoading = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = HLSJS_URL;
      script.onload = () => (window.Hls ? resolve(window.Hls) : reject(new Error(`${HLSJS_URL} defined no Hls`)));
      script.onerror = async () => {
        script.remove();
        let detail = `GET ${HLSJS_URL} failed`;
        try {
          const res = await fetch(HLSJS_URL);
          const body = await res.text();
          let reason = body;
          try {
            reason = JSON.parse(body).detail ?? body;
          } catch {
            // not problem+json
          }
          detail = `${res.status}: ${reason}`;
        } catch (e) {
          detail = `${detail}: ${e.message}`;
        }
        reject(new Error(detail));
      };
      document.head.append(script);
    });
    // A later play() tries again (the package may have been installed since).
    hlsjsLoading.catch(() => {
      hlsjsLoading = null;
    });
    return hlsjsLoading;
  }

  // Safari plays HLS itself (AVFoundation, LL-HLS included). Chromium also
  // answers "maybe" for HLS now, but hls.js gives it the LL client and the
  // live-latency API, so only a browser without `window.chrome` goes native.
  function prefersNative(video) {
    return !window.chrome && video.canPlayType('application/vnd.apple.mpegurl') !== '';
  }

  function newCounters() {
    return { stalls: [], waitingSince: null, errors: [], partLoads: 0, fragLoads: 0, blockingReloads: 0 };
  }

  // `waiting` -> `playing` spans once playback has started: the stalls a viewer sees.
  function watchStalls(video, counters) {
    let started = false;
    const onWaiting = () => {
      if (started && counters.waitingSince === null) counters.waitingSince = performance.now();
    };
    const onPlaying = () => {
      started = true;
      if (counters.waitingSince !== null) {
        counters.stalls.push(Math.round(performance.now() - counters.waitingSince));
        counters.waitingSince = null;
      }
    };
    video.addEventListener('waiting', onWaiting);
    video.addEventListener('playing', onPlaying);
    return () => {
      video.removeEventListener('waiting', onWaiting);
      video.removeEventListener('playing', onPlaying);
    };
  }

  function hlsUrl(room, token) {
    const url = new URL(`/hls/${encodeURIComponent(room)}/index.m3u8`, window.location.href);
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  async function playHls(room, opts = {}) {
    const { engine = 'auto', config = {}, token = '' } = opts;
    stopHls();
    const video = $('hls-video');
    if (!video) throw new Error('no #hls-video element');
    const url = hlsUrl(room, token);
    const counters = newCounters();
    const unwatch = watchStalls(video, counters);
    const use = engine === 'auto' ? (prefersNative(video) ? 'native' : 'hlsjs') : engine;

    if (use === 'native') {
      player = { engine: 'native', url, video, counters, unwatch };
      video.src = url;
      video.play().catch(() => {});
      setStatus(`native HLS: ${url}`);
      log(`playing ${room} natively`);
      return { engine: 'native', url, version: null, config: null, levels: [] };
    }

    let Hls;
    try {
      Hls = await loadHlsJs();
    } catch (e) {
      unwatch();
      setStatus(`hls.js unavailable: ${e.message}`, true);
      log(`hls.js unavailable: ${e.message}`, true);
      throw e;
    }
    if (!Hls.isSupported()) {
      unwatch();
      const e = new Error('this browser has neither Media Source Extensions nor native HLS');
      setStatus(e.message, true);
      throw e;
    }
    const hls = new Hls({ ...HLSJS_DEFAULTS, ...config });
    player = { engine: 'hlsjs', url, video, hls, counters, unwatch };
    hls.on(Hls.Events.LEVEL_LOADING, (_, d) => {
      if (/[?&]_HLS_msn=/.test(d.url)) counters.blockingReloads++;
    });
    hls.on(Hls.Events.FRAG_LOADED, (_, d) => {
      if (d.part) counters.partLoads++;
      else counters.fragLoads++;
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, (_, d) => {
      const l = hls.levels[d.level];
      if (l) log(`level ${d.level}: ${l.width}x${l.height}`);
      renderLevels();
    });
    const parsed = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no playable multivariant playlist at ${url} within ${MANIFEST_TIMEOUT_MS} ms`)), MANIFEST_TIMEOUT_MS);
      hls.once(Hls.Events.MANIFEST_PARSED, () => {
        clearTimeout(timer);
        resolve();
      });
      hls.on(Hls.Events.ERROR, (_, d) => {
        counters.errors.push({ t: Date.now(), type: d.type, details: d.details, fatal: d.fatal, status: d.response?.code });
        if (counters.errors.length > MAX_ERRORS) counters.errors.shift();
        if (!d.fatal) return;
        log(`${d.type} ${d.details}${d.response?.code ? ` (HTTP ${d.response.code})` : ''}`, true);
        if (!hls.levels.length) {
          clearTimeout(timer);
          reject(new Error(`${d.details} on ${url}${d.response?.code ? `: HTTP ${d.response.code}` : ''}`));
        } else if (d.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else if (d.type === Hls.ErrorTypes.NETWORK_ERROR) {
          hls.startLoad();
        }
      });
    });
    hls.attachMedia(video);
    hls.loadSource(url);
    try {
      await parsed;
    } catch (e) {
      stopHls();
      setStatus(e.message, true);
      throw e;
    }
    video.play().catch(() => {});
    setStatus(`hls.js ${Hls.version}, low-latency mode: ${url}`);
    log(`playing ${room} with hls.js ${Hls.version}: ${hls.levels.length} levels`);
    renderLevels();
    return {
      engine: 'hlsjs',
      url,
      version: Hls.version,
      config: { ...HLSJS_DEFAULTS, ...config },
      levels: hls.levels.map((l) => ({ width: l.width, height: l.height, bitrate: l.bitrate, codecs: l.codecSet ?? l.attrs?.CODECS })),
    };
  }

  function stopHls() {
    if (!player) return;
    const { hls, video, unwatch } = player;
    player = null;
    unwatch();
    hls?.destroy();
    video.removeAttribute('src');
    video.load();
    setStatus('stopped');
    renderLevels();
  }

  function bufferAhead(video) {
    const b = video.buffered;
    for (let i = 0; i < b.length; i++) {
      if (b.start(i) <= video.currentTime + 0.05 && video.currentTime <= b.end(i)) return b.end(i) - video.currentTime;
    }
    return 0;
  }

  function hlsStats() {
    if (!player) return null;
    const { engine, url, video, hls, counters } = player;
    const q = video.getVideoPlaybackQuality?.() ?? {};
    const waitingMs = counters.waitingSince === null ? 0 : Math.round(performance.now() - counters.waitingSince);
    const out = {
      engine,
      url,
      currentTime: video.currentTime,
      paused: video.paused,
      readyState: video.readyState,
      width: video.videoWidth,
      height: video.videoHeight,
      totalVideoFrames: q.totalVideoFrames ?? 0,
      droppedVideoFrames: q.droppedVideoFrames ?? 0,
      bufferAheadS: bufferAhead(video),
      playbackRate: video.playbackRate,
      waiting: counters.waitingSince !== null,
      stalls: counters.stalls.length,
      longestStallMs: Math.max(0, waitingMs, ...counters.stalls),
      latency: null,
      targetLatency: null,
      drift: null,
      playingDate: null,
      sincePlayingDateMs: null,
      levels: [],
      currentLevel: -1,
      loadLevel: -1,
      partLoads: counters.partLoads,
      fragLoads: counters.fragLoads,
      blockingReloads: counters.blockingReloads,
      errors: counters.errors.slice(-10),
    };
    if (hls) {
      Object.assign(out, {
        latency: hls.latency,
        targetLatency: hls.targetLatency,
        drift: hls.drift,
        playingDate: hls.playingDate ? hls.playingDate.getTime() : null,
        levels: hls.levels.map((l) => ({ width: l.width, height: l.height, bitrate: l.bitrate })),
        currentLevel: hls.currentLevel,
        loadLevel: hls.loadLevel,
      });
    } else {
      // Safari: the live edge is the end of the seekable range; the date of
      // the current frame comes from getStartDate() (PDT of the first segment).
      const s = video.seekable;
      if (s.length) out.latency = s.end(s.length - 1) - video.currentTime;
      const start = video.getStartDate?.()?.getTime();
      if (Number.isFinite(start)) out.playingDate = start + video.currentTime * 1000;
    }
    if (out.playingDate) out.sincePlayingDateMs = Date.now() - out.playingDate;
    return out;
  }

  const secs = (v) => (typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(2)} s` : '-');

  function renderStats() {
    const el = $('hls-stats');
    if (!el) return;
    const s = hlsStats();
    if (!s) {
      el.textContent = 'not playing';
      return;
    }
    const level = s.levels[s.currentLevel];
    el.textContent = [
      `live latency: ${secs(s.latency)}${s.targetLatency ? ` (target ${secs(s.targetLatency)})` : ''}`,
      `glass to glass: ${s.sincePlayingDateMs === null ? '-' : secs(s.sincePlayingDateMs / 1000)}`,
      `level: ${level ? `${s.currentLevel + 1}/${s.levels.length} ${level.width}x${level.height} @ ${Math.round(level.bitrate / 1000)} kbit/s` : s.width ? `${s.width}x${s.height}` : '-'}`,
      `buffer: ${secs(s.bufferAheadS)}, rate ${s.playbackRate.toFixed(2)}, stalls ${s.stalls} (longest ${s.longestStallMs} ms)`,
      `frames: ${s.totalVideoFrames} (dropped ${s.droppedVideoFrames}), parts ${s.partLoads}, blocking reloads ${s.blockingReloads}`,
    ].join('\n');
  }

  // The level picker: "auto" (hls.js ABR) plus one entry per variant.
  function renderLevels() {
    const sel = $('hls-level');
    if (!sel) return;
    const hls = player?.hls;
    const want = hls ? ['auto', ...hls.levels.map((l, i) => `${i}:${l.width}x${l.height}`)] : ['auto'];
    const have = [...sel.options].map((o) => o.value);
    if (want.join() !== have.join()) {
      sel.replaceChildren(
        ...want.map((v) => {
          const o = document.createElement('option');
          o.value = v;
          o.textContent = v === 'auto' ? 'auto' : v.split(':')[1];
          return o;
        }),
      );
    }
    sel.value = hls && hls.manualLevel >= 0 ? want[hls.manualLevel + 1] : 'auto';
  }

  function setLevel(value) {
    const hls = player?.hls;
    if (!hls) return;
    hls.currentLevel = value === 'auto' ? -1 : Number(value.split(':')[0]);
  }

  function wireUi() {
    const form = $('hls-form');
    if (!form) return;
    const room = new URLSearchParams(window.location.search).get('room');
    if (room) form.room.value = room;
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      playHls(form.room.value, { token: form.token?.value.trim() ?? '' })
        .then(() => setButtons(true))
        .catch(() => setButtons(false));
    });
    $('hls-stop')?.addEventListener('click', () => {
      stopHls();
      setButtons(false);
    });
    $('hls-level')?.addEventListener('change', (e) => setLevel(e.target.value));
    setInterval(renderStats, 500);
  }

  function setButtons(playing) {
    const start = $('hls-start');
    const stop = $('hls-stop');
    if (start) start.disabled = playing;
    if (stop) stop.disabled = !playing;
  }

  Object.assign(window.wave, { playHls, stopHls, hlsStats });
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wireUi);
  else wireUi();
})();
