/**
 * The feature browser (issue 20) in a real headless browser: synthetic `sae features` folders
 * written to a temp dir and opened through file:// URLs, so every check also shows the page needs
 * no server. Without /usr/bin/chromium the browser checks are skipped with a warning.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import {
  browserHtml, dataPaths, featureScript, indexScript, readDataScript, textsScript, vocabScript,
} from '../src/report/browser/page.js';
import { writeFeatureFolder, type FeatureFolder } from './helpers/feature-folder.js';

// The callbacks handed to page.evaluate/$eval/waitForFunction run in the page; tsconfig has no DOM
// lib, so the few page globals they touch are declared here, for this file only.
interface PageElement { hidden: boolean; textContent: string | null; getAttribute(name: string): string | null }
declare const document: { getElementById(id: string): PageElement | null; querySelector(sel: string): PageElement | null };
declare const location: { hash: string };
declare function getComputedStyle(e: unknown): { backgroundColor: string; fontWeight: string; textDecorationLine: string };

const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
if (!HAVE_CHROMIUM) console.warn(`feature-browser.test: ${CHROMIUM} is absent; the headless-browser checks are skipped (.ci/run installs chromium)`);
const inBrowser = HAVE_CHROMIUM ? it : it.skip;

const ODD = '</script><b>x\u2028y\u2029';
let root: string;
let small: FeatureFolder; // two SAEs of 300 features, every page written
let big: FeatureFolder; // 24,576 features, a 50,257-token vocabulary, two pages written
let browser: Browser | undefined;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-browser-'));
  small = await writeFeatureFolder(path.join(root, 'small'), {
    saes: [{ label: 'mc', F: 300, activation: 'mutual' }, { label: 'topk', F: 300 }],
    plant: [{ label: 'mc', id: 123, token: ' zebra' }, { label: 'mc', id: 5, token: ODD }],
  });
  big = await writeFeatureFolder(path.join(root, 'big'), {
    saes: [{ label: 'fc', F: 24_576, activation: 'feature' }],
    vocabSize: 50_257,
    pages: { fc: [0, 24_575] },
    plant: [{ label: 'fc', id: 20_000, token: ' zebra' }],
  });
  if (HAVE_CHROMIUM) {
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  }
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await fs.rm(root, { recursive: true, force: true });
});

const url = (f: FeatureFolder, hash = '') => pathToFileURL(path.join(f.dir, 'index.html')).href + hash;

/** A fresh tab on a folder's page; fails the test on any uncaught error in the page. */
async function open(f: FeatureFolder, hash = ''): Promise<{ page: Page; requests: string[]; done: () => Promise<void> }> {
  const page = await browser!.newPage();
  const errors: string[] = [];
  const requests: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(url(f, hash), { waitUntil: 'load' });
  return {
    page, requests,
    done: async () => {
      await page.close();
      expect(errors).toEqual([]);
    },
  };
}

const rowIds = (page: Page) => page.$$eval('#feature-list tbody tr', (trs) => trs.map((tr) => Number(tr.getAttribute('data-id'))));
const text = (page: Page, sel: string) => page.$eval(sel, (e) => e.textContent);
const num = (x: number) => (x === 0 ? '0' : Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5 ? x.toExponential(2) : String(Number(x.toPrecision(3))));
const alpha = (css: string) => {
  const m = /rgba?\(([^)]*)\)/.exec(css)!;
  const parts = m[1].split(',').map(Number);
  return parts.length === 4 ? parts[3] : 1;
};

async function search(page: Page, q: string, count: string): Promise<void> {
  await page.$eval('#search', (e, v) => {
    const input = e as unknown as { value: string; dispatchEvent(ev: unknown): boolean };
    input.value = v;
    input.dispatchEvent(new Event('input'));
  }, q);
  await page.waitForFunction((c) => document.getElementById('match-count')!.textContent === c, {}, count);
}

describe('feature browser data files', () => {
  it('round-trip through readDataScript, with </script> and U+2028/2029 in token text', () => {
    const vocab = { tokens: ['a', ODD, ' naïve', '<!--', '\n'] };
    const idx = small.indices.mc;
    const page = small.pages.mc.get(7)!;
    const files = [vocabScript(vocab), textsScript(small.texts), indexScript('mc', idx), featureScript('mc', page)];
    expect(files.map(readDataScript)).toEqual([[vocab], [small.texts], ['mc', idx], ['mc', 7, page]]);
    for (const t of files) {
      expect(t).not.toMatch(/<\/script|<!--|\u2028|\u2029/);
      expect(t).toMatch(/^saeBrowser\.(vocab|texts|index|feature)\(/);
    }
    expect(dataPaths.feature('mc', 7)).toBe('data/mc/f/7.js');
    expect(dataPaths.index('mc')).toBe('data/mc/index.js');
    expect(() => readDataScript('alert(1)')).toThrow(/not a feature-browser data file/);
  });

  it('writes one self-contained page: no external URL, manifest escaped, inline script parses', () => {
    const manifest = { ...small.manifest, model: `m${ODD}` };
    const html = browserHtml(manifest);
    expect(html).not.toMatch(/https?:|\/\/[a-z]/i);
    expect(html).not.toMatch(/<(link|img|iframe)\b|<script[^>]*\bsrc=/i);
    const json = /<script type="application\/json" id="sae-manifest">([\s\S]*?)<\/script>/.exec(html)![1];
    expect(JSON.parse(json)).toEqual(manifest);
    const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
    expect(scripts).toHaveLength(1);
    expect(() => new Function(scripts[0])).not.toThrow();
  });
});

describe('feature browser in headless Chromium', () => {
  inBrowser('lists the features: the count and the first page of rows', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    expect(await text(page, '#match-count')).toBe('300 features');
    expect(await rowIds(page)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    const cells = await page.$$eval('#feature-list tbody tr[data-id="1"] td', (tds) => tds.map((td) => td.textContent));
    const idx = small.indices.mc;
    expect(cells.slice(0, 5)).toEqual(['1', num(idx.density[1]), num(idx.maxActivation[1]), String(idx.zipfRank[1]), num(idx.shared[1])]);
    await page.click('#next');
    expect((await rowIds(page))[0]).toBe(100);
    await done();
  });

  inBrowser('finds the feature whose top token contains the searched text', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    await page.type('#search', 'zebra');
    await page.waitForFunction(() => document.getElementById('match-count')!.textContent === '1 of 300 match');
    expect(await rowIds(page)).toEqual([123]);
    expect(await text(page, '#feature-list tbody tr td:nth-child(6)')).toBe('·zebra');
    await search(page, '  ZeBrA ', '1 of 300 match');
    expect(await rowIds(page)).toEqual([123]);
    await search(page, '</script>', '1 of 300 match'); // the planted odd token survives the trip
    expect(await rowIds(page)).toEqual([5]);
    expect(await text(page, '#feature-list tbody tr td:nth-child(6)')).toBe('</script><b>x\u2028y\u2029');
    await done();
  });

  inBrowser('finds a feature by its id', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    await search(page, '242', '1 of 300 match');
    expect(await rowIds(page)).toEqual([242]);
    await search(page, '300', '0 of 300 match');
    expect(await rowIds(page)).toEqual([]);
    await done();
  });

  inBrowser('shows a feature’s contexts shaded by activation, the activating token marked', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    await page.click('#feature-list tbody tr[data-id="7"] td:nth-child(3)');
    await page.waitForSelector('#feature-page .example');
    expect(await page.evaluate(() => location.hash)).toBe('#feature=mc/7');
    const fp = small.pages.mc.get(7)!;
    const ex = fp.top[0];
    const toks = await page.$$eval('#feature-page .examples.top .example:first-child .tok', (spans) =>
      spans.map((s) => {
        const cs = getComputedStyle(s);
        return { act: s.getAttribute('data-act'), title: s.getAttribute('title'), bg: cs.backgroundColor, at: s.classList.contains('at'), weight: cs.fontWeight, deco: cs.textDecorationLine };
      }),
    );
    expect(toks.map((t) => t.act)).toEqual(ex.acts.map(String));
    expect(toks.map((t) => t.title)).toEqual(ex.acts.map(num));
    expect(toks.findIndex((t) => t.at)).toBe(ex.at);
    expect(toks.filter((t) => t.at)).toHaveLength(1);
    expect(Number(toks[ex.at].weight)).toBeGreaterThanOrEqual(700);
    expect(toks[ex.at].deco).toContain('underline');
    const shade = toks.map((t) => alpha(t.bg));
    ex.acts.forEach((a, i) => {
      if (a === 0) expect(toks[i].bg).toBe('rgba(0, 0, 0, 0)');
      else expect(shade[i]).toBeCloseTo(a / fp.maxActivation, 2);
    });
    expect(ex.acts.some((a) => a === 0) && ex.acts.filter((a) => a > 0).length > 2).toBe(true);
    const byAct = ex.acts.map((a, i) => [a, shade[i]]).sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < byAct.length; i++) expect(byAct[i][1]).toBeGreaterThanOrEqual(byAct[i - 1][1]);
    await done();
  });

  inBrowser('shows the quantile bands, the histogram and the logit table', async () => {
    const { page, done } = await open(small, '#feature=topk/9');
    await page.waitForSelector('#feature-page .example');
    const fp = small.pages.topk.get(9)!;
    expect(await page.$$eval('#feature-page .band h4', (hs) => hs.map((h) => h.textContent))).toEqual(
      fp.quantiles.slice().reverse().map((b) => `${b.label} ${num(b.from)} – ${num(b.to)}`),
    );
    expect(await page.$$eval('#feature-page .band .example', (e) => e.length)).toBe(fp.quantiles.reduce((n, b) => n + b.examples.length, 0));
    expect(await page.$$eval('#feature-page .histogram svg rect', (r) => r.length)).toBe(fp.histogram.counts.length);
    const logitRows = await page.$$eval('#feature-page table.logits tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    expect(logitRows.map((r) => r[1])).toEqual(fp.logits.promoted.map((p) => num(p[1])).concat(['']));
    expect(logitRows.map((r) => r[3])).toEqual(fp.logits.suppressed.map((p) => num(p[1])));
    await done();
  });

  inBrowser('links a feature by the URL hash; the back button returns to the list', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    await page.click('#feature-list tbody tr[data-id="3"] a');
    await page.waitForFunction(() => document.querySelector('#feature-page h2')?.textContent?.startsWith('Feature 3 '));
    await page.goBack();
    await page.waitForFunction(() => !document.getElementById('list-view')!.hidden && document.getElementById('feature-page')!.hidden);
    expect((await rowIds(page))[0]).toBe(0);
    await done();
  });

  inBrowser('sorts by density, descending then ascending', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    const d = small.indices.mc.density;
    const ids = d.map((_, f) => f);
    const desc = [...ids].sort((a, b) => d[b] - d[a] || a - b).slice(0, 100);
    const asc = [...ids].sort((a, b) => d[a] - d[b] || a - b).slice(0, 100);
    await page.click('#feature-list th[data-sort="density"] button');
    expect(await rowIds(page)).toEqual(desc);
    expect(await page.$eval('th[data-sort="density"]', (t) => t.getAttribute('aria-sort'))).toBe('descending');
    await page.click('#feature-list th[data-sort="density"] button');
    expect(await rowIds(page)).toEqual(asc);
    expect(await page.$eval('th[data-sort="density"]', (t) => t.getAttribute('aria-sort'))).toBe('ascending');
    await done();
  });

  inBrowser('switches the list between SAEs with the selector', async () => {
    const { page, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    await page.select('#sae-select', 'topk');
    await page.waitForFunction(() => location.hash === '#list=topk' && document.querySelector('#feature-list tbody a')?.getAttribute('href') === '#feature=topk/0');
    expect(await text(page, '#match-count')).toBe('300 features');
    await done();
  });

  inBrowser('shows per-token feature counts of both SAEs and lists a token’s features', async () => {
    const { page, done } = await open(small, '#texts=1');
    await page.waitForSelector('#token-flow button.ttok[data-i]');
    const t = small.texts.texts[1];
    const counts = await page.$$eval('#token-flow button.ttok[data-i]', (bs) =>
      bs.map((b) => Object.fromEntries([...b.querySelectorAll('.count')].map((c) => [c.getAttribute('data-label'), Number(c.textContent)]))),
    );
    expect(counts).toEqual(t.ids.map((_, i) => ({ mc: t.features.mc[i].length, topk: t.features.topk[i].length })));
    const i = t.features.topk.findIndex((fs, j) => fs.length > 2 && t.features.mc[j].length > 0);
    await page.click(`#token-flow button[data-i="${i}"]`);
    const lists = await page.$$eval('#token-features .token-feature-list', (cols) =>
      cols.map((c) => ({ label: c.getAttribute('data-label'), links: [...c.querySelectorAll('li a')].map((a) => a.getAttribute('href')) })),
    );
    expect(lists).toEqual(['mc', 'topk'].map((l) => ({ label: l, links: t.features[l][i].map(([f]) => `#feature=${l}/${f}`) })));
    const [f] = t.features.topk[i][0];
    await page.click('#token-features .token-feature-list[data-label="topk"] li:first-child a');
    await page.waitForFunction((id) => document.querySelector('#feature-page h2')?.textContent === `Feature ${id} topk`, {}, f);
    await done();
  });

  inBrowser('shows one error line when a feature file is missing', async () => {
    await fs.rm(path.join(small.dir, dataPaths.feature('mc', 250)));
    const { page, done } = await open(small, '#feature=mc/250');
    await page.waitForSelector('#error:not([hidden])');
    expect(await text(page, '#error')).toBe('could not load data/mc/f/250.js (missing file?)');
    expect(await page.$eval('#feature-page', (e) => (e as unknown as PageElement).hidden)).toBe(false);
    await done();
  });

  inBrowser('loads 24,576 features in under 2 s', async () => {
    const page = await browser!.newPage();
    const t0 = Date.now();
    await page.goto(url(big), { waitUntil: 'load' });
    await page.waitForSelector('#feature-list tbody tr');
    const wall = Date.now() - t0;
    const sinceNavigation = await page.evaluate(() => performance.now());
    expect(await text(page, '#match-count')).toBe('24576 features');
    expect(await rowIds(page)).toHaveLength(100);
    let s = Date.now();
    await search(page, 'zebra', '1 of 24576 match');
    const searchMs = Date.now() - s;
    expect(await rowIds(page)).toEqual([20_000]);
    await search(page, '', '24576 features');
    s = Date.now();
    await page.click('#feature-list th[data-sort="shared"] button');
    const sortMs = Date.now() - s;
    console.log(`feature-browser: 24,576 features listed in ${wall} ms (page clock ${Math.round(sinceNavigation)} ms); search ${searchMs} ms, sort ${sortMs} ms`);
    expect(wall).toBeLessThan(2000);
    expect(sinceNavigation).toBeLessThan(2000);
    await page.close();
  });

  inBrowser('needs no network: every request is a file:// URL and no element points elsewhere', async () => {
    const { page, requests, done } = await open(small);
    await page.waitForSelector('#feature-list tbody tr');
    await page.evaluate(() => { location.hash = '#feature=mc/1'; });
    await page.waitForSelector('#feature-page .example');
    await page.evaluate(() => { location.hash = '#texts=0'; });
    await page.waitForSelector('#token-flow button.ttok');
    expect(requests.length).toBeGreaterThanOrEqual(5);
    expect(requests.filter((r) => !r.startsWith('file://'))).toEqual([]);
    const external = await page.$$eval('[src], [href]', (es) =>
      es.map((e) => e.getAttribute('src') ?? e.getAttribute('href') ?? '').filter((u) => /^[a-z]+:|^\/\//i.test(u)),
    );
    expect(external).toEqual([]);
    await done();
  });
});
