// HTTPS on the node itself: browsers grant a camera only in a secure
// context, so a node on a VPS, reached by name, must serve its page over
// TLS. A node with --tls-cert/--tls-key (a certificate for wave.test made
// with openssl) and --auth-secret; Chromium resolves wave.test to
// 127.0.0.1 and accepts the self-made certificate. The demo page at
// https://wave.test:PORT/ is a secure context with a camera, publishes with
// a token, and a second page watches and decodes it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN_DIR, failureContext, launchBrowser, startNode, until } from './helpers.mjs';

const ROOM = `tls-${randomBytes(4).toString('hex')}`;
const SECRET = `e2e-${randomBytes(8).toString('hex')}`;

function token(args) {
  return execFileSync(join(BIN_DIR, 'sfu'), ['token', '--secret', SECRET, ...args]).toString().trim();
}

describe(`the demo page over HTTPS at a name publishes and watches (room ${ROOM})`, { timeout: 90_000 }, () => {
  const pages = {};
  let node;
  let browser;
  let dir;
  let base;
  const ctx = failureContext(() => node, pages);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wave-e2e-tls-'));
    const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=wave.test', '-addext', 'subjectAltName=DNS:wave.test',
    ], { stdio: 'ignore' });
    node = await startNode({ env: { SFU_TLS_CERT: cert, SFU_TLS_KEY: key, SFU_AUTH_SECRET: SECRET } });
    base = `https://wave.test:${node.port}`;
    browser = await launchBrowser(['--host-resolver-rules=MAP wave.test 127.0.0.1', '--ignore-certificate-errors']);
  });

  after(async () => {
    await browser?.close();
    await node?.kill();
    node?.cleanup({ keepLog: ctx.failed || !!process.env.WAVE_E2E_KEEP_LOGS });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(
    'is a secure context with a camera; publishes with a token and a second page decodes it',
    ctx.step(async (t) => {
      pages.pub = await browser.page(`${base}/`, 'publisher@https');
      const secure = await pages.pub.evaluate(() => ({
        secure: window.isSecureContext,
        camera: typeof navigator.mediaDevices?.getUserMedia === 'function',
        protocol: location.protocol,
      }));
      assert.deepEqual(secure, { secure: true, camera: true, protocol: 'https:' });
      const pub = await pages.pub.evaluate(
        ([room, token]) => window.wave.publish(room, { token }),
        [ROOM, token(['--room', ROOM, '--identity', 'alice', '--publish'])],
      );
      assert.equal(new URL(pub.location, base).origin, base, JSON.stringify(pub));
      await until(pages.pub, (s) => s.publish?.state === 'connected' && s.publish.layers.some((l) => l.framesEncoded > 0), 20_000, 'publisher connected');
      pages.view = await browser.page(`${base}/`, 'viewer@https');
      await pages.view.evaluate(
        ([room, token]) => window.wave.watch(room, { token, layer: 'low' }),
        [ROOM, token(['--room', ROOM, '--identity', 'bob', '--subscribe'])],
      );
      const s = await until(pages.view, (s) => s.watch?.framesDecoded > 30, 30_000, 'viewer decoding over the HTTPS page');
      t.diagnostic(`viewer over HTTPS: ${s.watch.framesDecoded} frames at ${s.watch.frameWidth}x${s.watch.frameHeight}`);
    }),
  );
});
