// The web UI in a real browser: Debian's chromium, driven by playwright-core, types a question into the
// page `tsft web-ui` serves and sees the answer stream in; stop and clear work; model output that looks
// like HTML stays text. Skipped only when chromium is missing and CI is unset (CI installs it).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { initDevice } from '../src/backend/device';
import { PtEngine } from '../src/infer/engine';
import { serve, type RunningServer } from '../src/serve/server';
import { renderWebUi } from '../src/serve/webui-page';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const skip = !fs.existsSync(CHROMIUM) && !process.env.CI ? `${CHROMIUM} is not installed (apt-get install chromium)` : false;

describe('tsft web-ui in chromium', { skip }, () => {
  let engine: PtEngine;
  let srv: RunningServer;
  let browser: BrowserContext;
  let page: Page;
  let profile: string;

  before(async () => {
    await initDevice('wasm', { quiet: true });
    engine = await PtEngine.create('tiny');
    srv = await serve(engine, { port: 0, webUi: { lang: 'en', system: 'You are a helpful assistant.' }, defaults: { temperature: 0, max_tokens: 24 } });
    profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-chromium-'));
    // a fresh profile (playwright passes it as --user-data-dir); no background traffic from chromium
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
      timeout: 60_000,
    });
    page = browser.pages()[0] ?? await browser.newPage();
    page.setDefaultTimeout(60_000);
  });
  after(async () => {
    await browser?.close();
    await srv?.close();
    await engine?.close();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('types a question and sees the streamed answer', async () => {
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(srv.url);
    assert.equal(await page.textContent('#send'), 'Send');
    assert.equal(await page.inputValue('#system'), 'You are a helpful assistant.');
    assert.equal(await page.inputValue('#max-tokens'), '24');
    // watch the assistant bubble grow: several distinct lengths means it streamed
    await page.evaluate(() => {
      const w = window as unknown as { lengths: number[] };
      w.lengths = [];
      new MutationObserver(() => {
        const c = document.querySelector('.msg.assistant .content');
        if (c) w.lengths.push((c.textContent ?? '').length);
      }).observe(document.getElementById('messages')!, { subtree: true, childList: true, characterData: true });
    });
    await page.fill('#input', 'who are you?');
    await page.click('#send');
    await page.waitForSelector('body[data-state="idle"] .msg.assistant', { timeout: 60_000 });
    await page.waitForFunction(() => document.body.dataset.state === 'idle');
    const answer = await page.textContent('.msg.assistant .content');
    const lengths = await page.evaluate(() => (window as unknown as { lengths: number[] }).lengths);
    const [want] = await engine.infer([{ messages: [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content: 'who are you?' }] }],
      { temperature: 0, max_tokens: 24 });
    assert.equal(answer, want.choices[0].message.content);
    assert.ok(new Set(lengths.filter((n) => n > 0)).size > 2, `the answer should arrive in pieces: ${lengths}`);
    assert.match(await page.textContent('#status') ?? '', /done \(length, 24 tokens\)/);
    assert.deepEqual(errors, []);

    // the history goes with the next question; clear empties it
    await page.fill('#input', '你是谁训练的？');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant').length === 2 && document.body.dataset.state === 'idle');
    await page.click('#clear');
    assert.equal(await page.locator('.msg').count(), 0);
  });

  it('stop ends a long answer and the server cancels it', async () => {
    await page.fill('#max-tokens', '3000');
    await page.fill('#input', 'tell me a long story');
    await page.click('#send');
    await page.waitForFunction(() => (document.querySelector('.msg.assistant .content')?.textContent ?? '').length > 0);
    await page.click('#stop');
    await page.waitForFunction(() => document.body.dataset.state === 'idle');
    assert.equal(await page.textContent('#status'), 'stopped');
    for (let i = 0; i < 200 && engine.stats.running; i++) await new Promise((r) => setTimeout(r, 25));
    assert.equal(engine.stats.running, 0);
    await page.fill('#max-tokens', '24');
  });

  it('renders model output as text, never as HTML', async () => {
    const evil = '<img src=x onerror="window.pwned=1"><b>bold</b></script>';
    await page.route('**/v1/chat/completions', (route) => route.fulfill({
      status: 200, contentType: 'text/event-stream',
      body: `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: evil }, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`,
    }));
    await page.click('#clear');
    await page.fill('#input', 'say something nasty');
    await page.click('#send');
    await page.waitForFunction(() => document.body.dataset.state === 'idle' && document.querySelectorAll('.msg.assistant').length === 1);
    assert.equal(await page.textContent('.msg.assistant .content'), evil);
    assert.equal(await page.locator('#messages img, #messages b').count(), 0);
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined);
    await page.unroute('**/v1/chat/completions');
  });

  it('speaks Chinese with --lang zh, and settings cannot break out of the page script', async () => {
    const html = renderWebUi({ lang: 'zh', model: '</script><script>window.pwned=2</script>', system: null });
    await page.setContent(html);
    assert.equal(await page.textContent('#send'), '发送');
    assert.equal(await page.textContent('#model'), '</script><script>window.pwned=2</script>');
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined);
  });
});
