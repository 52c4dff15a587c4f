// Issue 6: the demo page's chat panel and live viewer count in Chromium
// against the real `sfu` binary. Two pages join one room's chat through the
// panel's form; a line typed into page 1's form appears in page 2's list;
// when page 2 starts a WHEP viewer (page 1 publishing the fake camera), the
// "N watching" count in both panels goes from 0 to 1, and back to 0 when
// it stops. Everything runs on 127.0.0.1; the node is open (anonymous chat).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { browserSuite } from './helpers.mjs';

const ROOM = `chat-${randomBytes(4).toString('hex')}`;

describe(`demo page chat panel and viewer count (room ${ROOM})`, { timeout: 60_000 }, () => {
  const suite = browserSuite();
  const { pages, step } = suite;

  // Joins ROOM's chat through the panel's form, as a user would.
  async function joinChat(page) {
    await page.fill('#chat-join-form input[name=room]', ROOM);
    await page.click('#chat-join');
    await page.waitForFunction(() => /^joined as anon-/.test(document.getElementById('chat-status').textContent), null, {
      timeout: 5000,
    });
  }

  // The panel's "N watching · M in chat" line, once it matches `re`.
  async function countMatches(page, re, timeout = 5000) {
    const t0 = Date.now();
    await page.waitForFunction((src) => new RegExp(src).test(document.getElementById('chat-count').textContent), re.source, {
      timeout,
    });
    return { text: await page.textContent('#chat-count'), ms: Date.now() - t0 };
  }

  it(
    'a message typed in one page appears in the other',
    step(async () => {
      pages.one = await suite.browser.page(suite.node.url, 'chat-1');
      pages.two = await suite.browser.page(suite.node.url, 'chat-2');
      await joinChat(pages.one);
      await joinChat(pages.two);
      await countMatches(pages.one, /^0 watching · 2 in chat/);

      const text = `hello from page 1 ${randomBytes(3).toString('hex')}`;
      await pages.one.fill('#chat-send-form input[name=text]', text);
      await pages.one.click('#chat-send');
      const t0 = Date.now();
      await pages.two.waitForFunction(
        (t) => [...document.querySelectorAll('#chat-messages li')].some((li) => li.textContent.endsWith(t)),
        text,
        { timeout: 5000 },
      );
      const line = await pages.two.textContent('#chat-messages li:last-child');
      assert.match(line, /^anon-[0-9a-f]{8}: /, line);
      assert.equal(await pages.one.inputValue('#chat-send-form input[name=text]'), '', 'the form clears after sending');
      // Page 1 gets its own line from the same fan-out, possibly a moment later.
      const own = await pages.one
        .waitForFunction((t) => window.waveChat.messages().some((m) => m.text === t), text, { timeout: 5000 })
        .then(() => true, () => false);
      const sent = await pages.one.evaluate(() => window.waveChat.messages().map((m) => m.text));
      assert.ok(own, `page 1 shows its own line too: ${JSON.stringify(sent)}`);
      console.log(`chat line page 1 -> page 2 in ${Date.now() - t0} ms`);
    }),
  );

  it(
    'the viewer count follows a WHEP viewer joining and leaving',
    step(async () => {
      const pub = await pages.one.evaluate(
        (room) => window.wave.publish(room, { width: 320, height: 180, simulcast: false }),
        ROOM,
      );
      assert.ok(pub, 'publishing started');
      await countMatches(pages.one, /^0 watching · 2 in chat · live: /);

      await pages.two.evaluate((room) => window.wave.watch(room), ROOM);
      const one = await countMatches(pages.one, /^1 watching/);
      const two = await countMatches(pages.two, /^1 watching/);
      console.log(`viewer count: "${one.text}" after ${one.ms} ms on page 1, "${two.text}" on page 2`);

      const r = await pages.two.evaluate(() => window.wave.stop('watch'));
      assert.equal(r.watch, 200, 'DELETE watch');
      const after_ = await countMatches(pages.one, /^0 watching/);
      console.log(`viewer count back to "${after_.text}" after ${after_.ms} ms`);
      await pages.one.evaluate(() => window.wave.stop('publish'));
    }),
  );
});
