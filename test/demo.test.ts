import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lmDemo, DEMO_LM_ACTIVATIONS, spreadText, type LmDemoRow } from '../src/pipeline/demo-lm.js';
import { LOCK_FILE, LOCKED_EXIT, processStart } from '../src/util/lock.js';

const BIN = path.resolve('bin/run.js');
let root: string;
let lm: { results: LmDemoRow[]; report: string; browser: string };

const sae = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-demo-'));
  // exactly what `sae demo` runs on the LM (its default 2000 steps give each LM SAE 500)
  lm = await lmDemo({ out: path.join(root, 'demo'), steps: 500, seed: 0, kernels: 'auto' });
}, 120_000);

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae demo on the trained GPT-2 (gpt2-brown)', () => {
  it('every SAE recovers strictly between 0 and 100 % of the loss on held-out text', () => {
    expect(lm.results.map((r) => r.activation)).toEqual([...DEMO_LM_ACTIVATIONS]);
    for (const r of lm.results) {
      expect(r.lossRecovered, r.activation).toBeGreaterThan(0);
      expect(r.lossRecovered, r.activation).toBeLessThan(100);
    }
  });

  it("ends with a feature browser of the Mutual Choice SAE, TopK beside it", async () => {
    expect(lm.browser).toBe(path.join(root, 'demo', 'features', 'index.html'));
    const m = JSON.parse(await fs.readFile(path.join(root, 'demo', 'features', 'features.json'), 'utf8'));
    expect(m.saes.map((s: { label: string; activation: string }) => [s.label, s.activation])).toEqual([['mutual', 'mutual'], ['topk', 'topk']]);
    expect(m.tokens).toBe(16384);
    expect(await fs.readdir(path.join(root, 'demo', 'features', 'data', 'mutual', 'f'))).toHaveLength(512);
    // the report links to it and draws appendix D's figure from it
    const html = await fs.readFile(lm.report, 'utf8');
    expect(html).toContain('href="../features/index.html"');
    expect(html).toContain('<figure id="fig-features-per-token-kind"');
  });

  it('the report shows the features-per-token figure, measured on held-out activations', async () => {
    const html = await fs.readFile(lm.report, 'utf8');
    expect(html).toContain('<figure id="fig-features-per-token"');
    expect(html).not.toContain('needs a measurement');
    expect(html).toMatch(/Measured on lm-topk: eval\.json \(16384 rows\)/);
    await fs.access(path.join(path.dirname(lm.report), 'features-per-token.svg'));
    for (const r of lm.results) expect(r.featuresPerToken.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
    // TopK gives every token k features; the batch selections spread them (appendix D)
    expect(lm.results[0].featuresPerToken[8]).toBe(1);
    expect(lm.results[1].featuresPerToken[8]).toBeLessThan(0.5);
  });

  it('states the middle 90 % range of features per token', () => {
    expect(spreadText([0, 0, 0, 5])).toBe('3 features on 90 % of tokens');
    expect(spreadText([10, 30, 40, 20])).toBe('0–3 features on 90 % of tokens');
  });
});

describe('sae demo --out lock', () => {
  it('refuses an --out another live process holds, with one line and exit 75', async () => {
    const d = path.join(root, 'held');
    await fs.mkdir(d);
    const holder = { pid: process.pid, host: os.hostname(), since: '2026-01-01T00:00:00.000Z', procStart: processStart(process.pid), command: 'sae demo', token: 't' };
    await fs.writeFile(path.join(d, LOCK_FILE), JSON.stringify(holder));
    const r = sae('demo', '--out', d, '--steps', '10');
    expect(r.status).toBe(LOCKED_EXIT);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^sae: error: --out ${d} is in use by sae demo \\(pid ${process.pid} on `))]);
    expect(await fs.readdir(d)).toEqual([LOCK_FILE]);
  });

  it('takes an --out that holds only the stale lock of a crashed run, and leaves no lock behind', async () => {
    const d = path.join(root, 'stale');
    await fs.mkdir(d);
    const gone = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString());
    await fs.writeFile(path.join(d, LOCK_FILE), JSON.stringify({ pid: gone, host: os.hostname(), since: '2026-01-01T00:00:00.000Z', procStart: null, command: 'sae demo', token: 'old' }));
    const r = sae('demo', '--out', d, '--steps', '10');
    expect(r.stderr).not.toMatch(/sae: error/);
    expect(r.status).toBe(0);
    expect((await fs.readdir(d)).filter((n) => n.startsWith(LOCK_FILE))).toEqual([]);
  }, 120_000);

  it('a rerun replaces the report in its own folder, even one an earlier version wrote untagged', async () => {
    const d = path.join(root, 'earlier');
    await fs.mkdir(path.join(d, 'report'), { recursive: true });
    await fs.writeFile(path.join(d, '.sae-demo'), 'working directory of `sae demo`\n');
    await fs.writeFile(path.join(d, 'report', 'report.html'), '<!DOCTYPE html><p>an earlier demo</p>\n');
    const r = sae('demo', '--out', d, '--steps', '10');
    expect(r.stderr).not.toMatch(/sae: error/);
    expect(r.status).toBe(0);
    expect(await fs.readFile(path.join(d, 'report', 'report.html'), 'utf8')).toContain('<meta name="generator" content="sae report">');
  }, 120_000);
});
