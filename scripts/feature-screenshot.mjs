#!/usr/bin/env node
// Screenshots of the feature browser for docs/ (issue 20), rebuilt from a `sae features` folder:
//   node scripts/feature-screenshot.mjs FEATURES_DIR LABEL/ID [OUT_PREFIX]
// e.g. after `npm run demo`: node scripts/feature-screenshot.mjs sae-demo/features mutual/46 docs/feature-browser
// writes OUT_PREFIX.png (the feature's page) and OUT_PREFIX-tokens.png (the per-token view).
// Needs Debian's Chromium (/usr/bin/chromium) and the dev dependency puppeteer-core.
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import puppeteer from 'puppeteer-core';

const [dir, feature, prefix = 'docs/feature-browser'] = process.argv.slice(2);
if (!dir || !/^[\w.-]+\/\d+$/.test(feature ?? '')) {
  console.error('usage: node scripts/feature-screenshot.mjs FEATURES_DIR LABEL/ID [OUT_PREFIX]');
  process.exit(2);
}
const index = pathToFileURL(path.resolve(dir, 'index.html')).href;
const browser = await puppeteer.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900, deviceScaleFactor: 1 });
  await page.goto(`${index}#feature=${feature}`, { waitUntil: 'load' });
  await page.waitForSelector('#feature-page .example .tok');
  await page.screenshot({ path: `${prefix}.png`, fullPage: true });
  await page.goto(`${index}#texts=0`, { waitUntil: 'load' });
  await page.waitForSelector('#token-flow button.ttok');
  await page.click('#token-flow button.ttok[data-i="5"]');
  await page.screenshot({ path: `${prefix}-tokens.png`, fullPage: false });
  console.error(`wrote ${prefix}.png and ${prefix}-tokens.png`);
} finally {
  await browser.close();
}
