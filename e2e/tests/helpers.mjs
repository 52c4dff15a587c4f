// Shared helpers for the browser end-to-end tests: run the real `sfu`
// binary, drive Debian's chromium through playwright-core (and Debian's
// firefox-esr through puppeteer-core over WebDriver BiDi), poll the demo
// page's `wave.stats()`, and collect diagnostics when something fails.
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const BIN_DIR = resolve(process.env.WAVE_BIN_DIR ?? new URL('../../target/release', import.meta.url).pathname);
export const CHROMIUM = process.env.WAVE_CHROMIUM ?? '/usr/bin/chromium';
export const FIREFOX = process.env.WAVE_FIREFOX ?? '/usr/bin/firefox-esr';
// hls.js's dist directory (web/'s npm package) that the node serves to the page.
export const HLSJS_DIR = resolve(process.env.WAVE_HLSJS_DIR ?? new URL('../../web/node_modules/hls.js/dist', import.meta.url).pathname);

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-gpu',
];

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/**
 * Starts `sfu serve --http 127.0.0.1:PORT` and resolves once it prints its
 * ready line (one JSON object on stdout). Everything it writes goes to `node.logPath` (engine debug
 * logs included) so a failing test can quote it.
 */
export async function startNode({ readyMs = 15_000, env = {} } = {}) {
  const bin = join(BIN_DIR, 'sfu');
  if (!existsSync(bin)) throw new Error(`no sfu binary at ${bin}: run cargo build --release -p sfu`);
  const dir = mkdtempSync(join(tmpdir(), 'wave-e2e-node-'));
  const logPath = join(dir, 'sfu.log');
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const log = createWriteStream(logPath, { flags: 'a' });
    const child = spawn(bin, ['serve', '--http', `127.0.0.1:${port}`], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'sfu=debug,signaling=debug,info', NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((ok) => child.once('exit', (code, signal) => ok({ code, signal, at: Date.now() })));
    child.stderr.pipe(log, { end: false });
    const ready = new Promise((ok, fail) => {
      let buf = '';
      child.stdout.on('data', (d) => {
        log.write(d);
        buf += d;
        // The node's ready line: one JSON object, `{"http":"127.0.0.1:PORT",...}`.
        const line = buf.split('\n').find((l) => l.startsWith('{'));
        if (line && buf.includes('\n')) {
          try {
            ok(`http://${JSON.parse(line).http}`);
          } catch (e) {
            fail(new Error(`sfu printed an unreadable ready line: ${line}`));
          }
        }
      });
      exited.then(({ code, signal }) => fail(new Error(`sfu exited before listening (code ${code}, signal ${signal})`)));
      setTimeout(() => fail(new Error(`sfu did not print its ready line within ${readyMs} ms`)), readyMs).unref();
    });
    try {
      const url = await ready;
      return new Node({ child, exited, url, port, logPath, dir, log });
    } catch (e) {
      lastError = e;
      child.kill('SIGKILL');
      await exited;
      log.end();
    }
  }
  throw new Error(`${lastError.message}\n--- sfu log ---\n${tail(logPath, 60)}`);
}

class Node {
  constructor({ child, exited, url, port, logPath, dir, log }) {
    Object.assign(this, { child, exited, url, port, logPath, dir, log });
    this.base = `http://127.0.0.1:${port}`;
    this.result = null;
  }

  get alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async json(path) {
    const res = await fetch(this.base + path);
    if (!res.ok) throw new Error(`GET ${path}: ${res.status}`);
    return res.json();
  }

  /** The `rooms` array of `GET /v1/rooms`. */
  async rooms() {
    return (await this.json('/v1/rooms')).rooms;
  }

  async metrics(filter = /^wave_/) {
    const text = await (await fetch(`${this.base}/metrics`)).text();
    return text
      .split('\n')
      .filter((l) => filter.test(l))
      .join('\n');
  }

  /** SIGTERM, then how long the node took to exit (null if it did not within `ms`). */
  async terminate(ms = 2000) {
    if (!this.alive) return { ms: 0, code: this.child.exitCode, signal: this.child.signalCode };
    const t0 = Date.now();
    this.child.kill('SIGTERM');
    const r = await Promise.race([this.exited, sleep(ms + 1000).then(() => null)]);
    this.result = r && { ms: r.at - t0, code: r.code, signal: r.signal };
    return this.result;
  }

  /** Last resort for cleanup: never leaves a node behind. */
  async kill() {
    if (this.alive) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
    this.log.end();
  }

  logTail(lines = 80, filter) {
    return tail(this.logPath, lines, filter);
  }

  cleanup({ keepLog = false } = {}) {
    if (!keepLog) rmSync(this.dir, { recursive: true, force: true });
  }
}

export function tail(path, lines = 80, filter) {
  try {
    let all = readFileSync(path, 'utf8').split('\n');
    if (filter) all = all.filter((l) => filter.test(l));
    return all.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

// A page of either browser, named, its console kept for failure reports,
// at `url` once the demo page's `wave` API is up.
async function openDemoPage(page, url, name) {
  page.waveName = name;
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.consoleLines.push(`[pageerror] ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => typeof window.wave?.stats === 'function');
  return page;
}

/** Headless chromium with a fresh user-data dir; close with `browser.close()`. */
export async function launchBrowser(extraArgs = []) {
  if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM}: apt-get install chromium`);
  const userDataDir = mkdtempSync(join(tmpdir(), 'wave-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    viewport: { width: 1280, height: 800 },
  });
  // A persistent context opens one blank page; reuse it first.
  const spare = context.pages();
  return {
    context,
    async page(url, name) {
      const page = spare.shift() ?? (await context.newPage());
      return openDemoPage(page, url, name);
    },
    async close() {
      await context.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

// Firefox's counterparts of CHROMIUM_ARGS. Firefox gathers loopback
// candidates only with `ice.loopback`, and only for a page that has camera
// or microphone access: any other page gets "default local addresses only"
// (its default route's, here 192.0.2.2 and fd00::2), which it never pairs
// with the node's 127.0.0.1. `permission.fake` makes the fake camera count
// as that access.
export const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.navigator.permission.fake': true,
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.autoplay.default': 0,
};

/**
 * Headless Firefox ESR driven by puppeteer-core over WebDriver BiDi, with a
 * fresh profile (puppeteer's, removed on close); `page()` and `close()` as
 * for `launchBrowser`, so its pages fit `until` and `diagnostics`.
 */
export async function launchFirefox(prefs = {}) {
  if (!existsSync(FIREFOX)) throw new Error(`no firefox at ${FIREFOX}: apt-get install firefox-esr (scripts/setup.sh --test)`);
  const { default: puppeteer } = await import('puppeteer-core');
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    protocol: 'webDriverBiDi',
    headless: true,
    extraPrefsFirefox: { ...FIREFOX_PREFS, ...prefs },
  });
  return {
    browser,
    version: await browser.version(),
    async page(url, name) {
      const page = await browser.newPage();
      return openDemoPage(page, url, name);
    },
    async close() {
      const proc = browser.process();
      await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
      if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    },
  };
}

export const stats = (page) => page.evaluate(() => window.wave.stats());
/** `{ hls: wave.hlsStats() }`, shaped like `stats` so `until` can poll it. */
export const hlsStats = (page) => page.evaluate(() => ({ hls: window.wave.hlsStats() }));

/**
 * Polls `wave.stats()` every 250 ms until `pred(stats)` holds; resolves with
 * those stats and the time it took. Times out with the last sample.
 */
export async function until(page, pred, ms = 20_000, what = 'condition', sample = stats) {
  const t0 = Date.now();
  let s;
  for (;;) {
    s = await sample(page);
    if (pred(s)) return Object.assign(s, { elapsedMs: Date.now() - t0 });
    if (Date.now() - t0 >= ms) break;
    await sleep(250);
  }
  const err = new Error(`${page.waveName ?? 'page'}: timed out after ${ms} ms waiting for ${what}; last sample: ${JSON.stringify(s)}`);
  err.lastStats = s;
  throw err;
}

/** A chrome://webrtc-internals-like dump of every peer connection on the page. */
export async function rawStats(page) {
  return page.evaluate(async () => {
    const out = {};
    for (const kind of ['publish', 'watch']) {
      const s = window.wave.sessions[kind];
      if (!s) continue;
      const reports = [];
      (await s.pc.getStats()).forEach((r) => {
        if (['outbound-rtp', 'inbound-rtp', 'transport', 'candidate-pair', 'remote-inbound-rtp', 'codec'].includes(r.type)) {
          if (r.type === 'candidate-pair' && !r.nominated) return;
          reports.push(r);
        }
      });
      out[kind] = {
        location: s.location,
        connectionState: s.pc.connectionState,
        iceConnectionState: s.pc.iceConnectionState,
        reports,
      };
    }
    return out;
  });
}

/** Everything worth reading when a step fails, as one string. */
export async function diagnostics(node, pages) {
  const parts = [];
  const safe = async (label, f) => {
    try {
      parts.push(`--- ${label} ---\n${await f()}`);
    } catch (e) {
      parts.push(`--- ${label} --- (failed: ${e.message})`);
    }
  };
  await safe('GET /v1/rooms', async () => JSON.stringify(await node.rooms()));
  await safe('/metrics (wave_*)', () => node.metrics());
  for (const p of pages.filter(Boolean)) {
    await safe(`${p.waveName} getStats`, async () => JSON.stringify(await rawStats(p)));
    await safe(`${p.waveName} wave.hlsStats()`, async () => JSON.stringify((await hlsStats(p)).hls));
    await safe(`${p.waveName} console`, () => p.consoleLines.slice(-20).join('\n'));
  }
  await safe('sfu log (warnings/errors)', () => node.logTail(40, /WARN|ERROR/));
  await safe('sfu log (tail)', () => node.logTail(60));
  parts.push(`--- full sfu log: ${node.logPath} ---`);
  return parts.join('\n');
}

// Wraps test steps: a failing step gets the node's log tail and the pages'
// state appended to its error, and `failed` is set so `after` keeps the log.
// `node` is a getter because the node starts in `before`.
export function failureContext(node, pages) {
  const ctx = { failed: false };
  ctx.step = (fn) => async (t) => {
    try {
      await fn(t);
    } catch (e) {
      ctx.failed = true;
      if (node()) e.message += `\n\n${await diagnostics(node(), Object.values(pages))}`;
      throw e;
    }
  };
  return ctx;
}

/**
 * The common shape of a browser suite: registers `before` (start one `sfu`
 * node with `await nodeOptions()`, then Chromium) and `after` (close both;
 * keep the node's log when a step failed or WAVE_E2E_KEEP_LOGS is set) in
 * the calling `describe`. Returns the live state: `suite.node` and
 * `suite.browser` once `before` ran, `pages` (name -> page, quoted in
 * failure diagnostics) and `step` (wraps a test to attach them).
 */
export function browserSuite(nodeOptions = () => ({})) {
  const suite = { node: undefined, browser: undefined, pages: {} };
  const ctx = failureContext(() => suite.node, suite.pages);
  suite.step = ctx.step;
  before(async () => {
    suite.node = await startNode(await nodeOptions());
    suite.browser = await launchBrowser();
  });
  after(async () => {
    await suite.browser?.close();
    await suite.node?.kill();
    const keepLog = ctx.failed || !!process.env.WAVE_E2E_KEEP_LOGS;
    if (keepLog && suite.node) console.error(`sfu log kept at ${suite.node.logPath}`);
    suite.node?.cleanup({ keepLog });
  });
  return suite;
}

/** A real nats-server with JetStream on a free loopback port. */
export async function startNats() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'wave-e2e-nats-'));
  const child = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', dir], { stdio: 'ignore' });
  const exited = new Promise((ok) => child.once('exit', ok));
  child.once('error', (e) => {
    throw new Error(`cannot start nats-server (${e.message}); run scripts/setup.sh`);
  });
  const url = `nats://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    const up = await new Promise((ok) => {
      const sock = connect(port, '127.0.0.1', () => {
        sock.end();
        ok(true);
      });
      sock.on('error', () => ok(false));
    });
    if (up) {
      return { url, async stop() { child.kill('SIGKILL'); await exited; rmSync(dir, { recursive: true, force: true }); } };
    }
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`nats-server did not listen on ${port}`);
}

/**
 * A secured cluster for the relay suites: a real nats-server and one node per
 * id (`secret` for tokens, 200 ms heartbeats, `env` added), returned once every
 * node lists all of them. `bearer()` gives headers that may read `/v1/nodes`.
 */
export async function startCluster({ ids, secret, env = {}, bearer }) {
  const nats = await startNats();
  const nodes = {};
  const cluster = { nats, nodes };
  try {
    for (const id of ids) {
      nodes[id] = await startNode({
        env: { SFU_NATS: nats.url, SFU_AUTH_SECRET: secret, SFU_NODE_ID: id, SFU_HEARTBEAT: '200ms', SFU_NODE_TTL: '1s', ...env },
      });
    }
    for (const id of ids) {
      for (let i = 0; ; i++) {
        const r = await fetch(`${nodes[id].base}/v1/nodes`, { headers: bearer() });
        if (r.ok && (await r.json()).nodes.length === ids.length) break;
        if (i > 50) throw new Error(`node ${id} does not see ${ids.length} nodes`);
        await sleep(100);
      }
    }
  } catch (e) {
    await stopCluster(cluster, { failed: true });
    throw e;
  }
  return cluster;
}

/** Stops a [`startCluster`] cluster; on failure prints each node's relay log lines. */
export async function stopCluster({ nats, nodes }, ctx) {
  for (const n of Object.values(nodes)) {
    await n.kill();
    n.cleanup({ keepLog: ctx.failed || !!process.env.WAVE_E2E_KEEP_LOGS });
    if (ctx.failed) console.log(`--- node log: ${n.logPath}\n${n.logTail(30, /WARN|ERROR|relay/)}`);
  }
  await nats?.stop();
}
