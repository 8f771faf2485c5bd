import { promises as fs, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { loadFeatureFolder, loadFeatureFolders, loadRuns, parseMetrics } from '../src/report/data.js';
import { buildFigures, KIND_NAMES } from '../src/report/figures.js';
import { writeReport } from '../src/report/render.js';
import { TOKEN_KINDS } from '../src/eval/feature-data.js';
import { writeFeatureFolder, type FeatureFolder } from './helpers/feature-folder.js';
import { UserError } from '../src/util/errors.js';
import { LOCK_FILE, LOCKED_EXIT, processStart } from '../src/util/lock.js';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
const BIN = path.resolve('bin/run.js');

let root: string;
let data: string;
const runs: string[] = [];
const short = { k: 3, batchSize: 128, steps: 60, logEvery: 5, checkpointEvery: 100_000, lr: 3e-3 };

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-report-'));
  data = path.join(root, 'synth');
  await writeSynth({ out: data, d: 16, fTrue: 32, kTrue: 3, rows: 8192, seed: 1 });
  for (const [name, activation, width] of [['mc-64', 'mutual', 64], ['fc-64', 'feature', 64], ['topk-32', 'topk', 32]] as const) {
    const out = path.join(root, name);
    await train({ data, out, config: { ...short, activation, width } });
    runs.push(out);
  }
}, 60_000);

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

/** Data marks Vega drew as points / lines in one SVG. */
function marks(svg: string): { points: number; lines: number } {
  return {
    points: (svg.match(/aria-roledescription="point"/g) ?? []).length,
    lines: (svg.match(/aria-roledescription="line mark"/g) ?? []).length,
  };
}

describe('metrics.jsonl', () => {
  it('skips a partial last line', () => {
    expect(parseMetrics('{"step":5,"fvu":0.5}\n{"step":10,"fv').map((p) => p.step)).toEqual([5]);
  });
});

describe('sae report', () => {
  it('writes an SVG per figure and a self-contained report.html whose marks match the data', async () => {
    const loaded = await loadRuns(runs, { data, maxRows: 2048 });
    expect(loaded.map((r) => r.name)).toEqual(['mc-64', 'fc-64', 'topk-32']);
    for (const r of loaded) {
      expect(r.density!.length).toBe(r.width);
      expect(r.metrics.length).toBe(12);
      expect(r.featuresPerToken!.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
      expect(r.fit).not.toBeNull();
      expect(r.fitMid).toBeNull(); // ranks 100..20,000 need a wider run
    }
    const out = path.join(root, 'report');
    const res = await writeReport(loaded, out);
    const ids = ['density-rank', 'features-per-token', 'training-curves', 'l0-fvu', 'dead-width'];
    expect(res.figures.map((f) => f.id)).toEqual(ids);
    // no run has a loss-recovered measurement: that chart is left out, with a note
    expect(res.notes.some((n) => n.startsWith('L0 against loss recovered'))).toBe(true);
    expect(res.files).toEqual([...ids.map((id) => path.join(out, `${id}.svg`)), path.join(out, 'report.html')]);

    const expected: Record<string, { points: number; lines: number }> = {
      'density-rank': { points: loaded.reduce((s, r) => s + r.density!.filter((v) => v > 0).length, 0), lines: 3 },
      'features-per-token': { points: loaded.reduce((s, r) => s + r.featuresPerToken!.length, 0), lines: 3 },
      // 4 panels × 3 runs × 12 logged steps (every value positive here)
      'training-curves': { points: 4 * 3 * 12, lines: 4 * 3 },
      'l0-fvu': { points: 3, lines: 0 },
      'dead-width': { points: 3, lines: 0 },
    };
    for (const f of res.figures) expect(f.points).toBe(expected[f.id].points);
    for (const id of ids) {
      const svg = await fs.readFile(path.join(out, `${id}.svg`), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(marks(svg), id).toEqual(expected[id]);
    }

    const html = await fs.readFile(path.join(out, 'report.html'), 'utf8');
    // self-contained: no external resources, no executable scripts
    expect(html).not.toMatch(/<script(?![^>]*application\/json)/);
    expect(html).not.toMatch(/(src|href)="https?:/);
    const json = JSON.parse(html.match(/<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/)![1]);
    expect(json.figures.map((f: { id: string }) => f.id)).toEqual(ids);

    if (!existsSync(CHROMIUM)) {
      console.warn(`report.test: ${CHROMIUM} is absent; the headless-browser check is skipped (.ci/run installs chromium)`);
      return;
    }
    const profile = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-chromium-'));
    try {
      const { stdout } = await run(
        CHROMIUM,
        ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`, '--dump-dom', pathToFileURL(path.join(out, 'report.html')).href],
        { timeout: 60_000, maxBuffer: 64 << 20 },
      );
      for (const id of ids) {
        const m = stdout.match(new RegExp(`<figure id="fig-${id}"[\\s\\S]*?</figure>`));
        expect(m, `figure ${id} in the browser's DOM`).not.toBeNull();
        expect(m![0]).toContain('<svg');
        expect(marks(m![0]), id).toEqual(expected[id]);
      }
    } finally {
      await fs.rm(profile, { recursive: true, force: true });
    }
  }, 90_000);

  it('draws L0 against loss recovered when a run carries a splice.json', async () => {
    const dir = path.join(root, 'with-splice');
    await fs.cp(runs[0], dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'splice.json'), JSON.stringify({ lossRecovered: 0.87 }));
    const loaded = await loadRuns([dir, runs[1]]);
    expect(loaded[0].lossRecovered).toBe(0.87);
    const { figures, notes } = buildFigures(loaded);
    const f = figures.find((x) => x.id === 'l0-loss-recovered')!;
    expect(f.points).toBe(1);
    // without --data and eval.json: no features-per-token figure, and a note that says so
    expect(figures.some((x) => x.id === 'features-per-token')).toBe(false);
    expect(notes.some((n) => n.includes('--data'))).toBe(true);
    const res = await writeReport(loaded, path.join(root, 'report-splice'));
    const svg = await fs.readFile(path.join(root, 'report-splice', 'l0-loss-recovered.svg'), 'utf8');
    expect(marks(svg).points).toBe(1);
    expect(res.files).toContain(path.join(root, 'report-splice', 'l0-loss-recovered.svg'));
  }, 30_000);

  it('names a run directory that is not a training run, in one line', async () => {
    const empty = path.join(root, 'empty');
    await fs.mkdir(empty, { recursive: true });
    await expect(loadRuns([runs[0], empty])).rejects.toThrow(UserError);
    await expect(loadRuns([empty])).rejects.toThrow(`run ${empty} is not a finished training run: it has no metrics.jsonl and summary.json`);
  });

  it('CLI: --json lists the files; bad runs and an --out that is a file fail with one line', async () => {
    const out = path.join(root, 'cli-report');
    const { stdout } = await run(process.execPath, [BIN, 'report', runs[0], runs[2], '--out', out, '--json']);
    const res = JSON.parse(stdout);
    expect(res.files).toContain(path.join(out, 'report.html'));
    for (const f of res.files) expect(existsSync(f)).toBe(true);

    const empty = path.join(root, 'not-a-run');
    await fs.mkdir(empty, { recursive: true });
    const bad = await run(process.execPath, [BIN, 'report', empty, '--out', out]).catch((e) => e);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n')).toEqual([`sae: error: run ${empty} is not a finished training run: it has no metrics.jsonl and summary.json`]);

    const file = path.join(root, 'a-file');
    await fs.writeFile(file, 'x');
    const bad2 = await run(process.execPath, [BIN, 'report', runs[0], '--out', file]).catch((e) => e);
    expect(bad2.code).not.toBe(0);
    expect(bad2.stderr.trim().split('\n')).toEqual([`sae: error: --out ${file} is an existing file, not a directory; choose another --out`]);
  }, 60_000);
  it('refuses --data whose preprocessing, hook or model is not the run’s (same d is not enough)', async () => {
    const raw = path.join(root, 'synth-raw');
    await writeSynth({ out: raw, d: 16, fTrue: 32, kTrue: 3, rows: 1024, seed: 1, preprocessing: 'none' });
    await expect(loadRuns([runs[0]], { data: raw })).rejects.toThrow(/shards have preprocessing=none but the run expects preprocessing=center_unit_norm/);
  });

  it('counts a run named twice (another spelling of the same folder) once', async () => {
    const loaded = await loadRuns([runs[0], runs[0] + '/', path.relative(process.cwd(), runs[0])]);
    expect(loaded.map((r) => r.name)).toEqual([path.basename(runs[0])]);
  });

  it('prints the report’s path on stdout without --json, and leaves no output folder behind after an error', async () => {
    const out = path.join(root, 'plain-report');
    const { stdout } = await run(process.execPath, [BIN, 'report', runs[0], '--out', out]);
    expect(stdout).toBe(path.join(out, 'report.html') + '\n');

    const empty = path.join(root, 'not-a-run-2');
    await fs.mkdir(empty, { recursive: true });
    const fresh = path.join(root, 'never-made');
    const bad = await run(process.execPath, [BIN, 'report', runs[0], empty, '--out', fresh]).catch((e) => e);
    expect(bad.code).not.toBe(0);
    expect(existsSync(fresh)).toBe(false);
    // an existing folder is the user's: kept, with what was in it
    const mine = path.join(root, 'users-folder');
    await fs.mkdir(mine);
    await fs.writeFile(path.join(mine, 'notes.txt'), 'keep');
    const bad2 = await run(process.execPath, [BIN, 'report', empty, '--out', mine]).catch((e) => e);
    expect(bad2.code).not.toBe(0);
    expect(await fs.readFile(path.join(mine, 'notes.txt'), 'utf8')).toBe('keep');
  }, 60_000);
});

describe('sae report --out keeps files it did not write', () => {
  const sae = (...args: string[]) => run(process.execPath, [BIN, 'report', ...args]).then((r) => ({ code: 0, ...r })).catch((e) => e as { code: number; stdout: string; stderr: string });

  it('refuses a report.html of the user’s with one line, leaving it unchanged', async () => {
    const d = path.join(root, 'users-report');
    await fs.mkdir(d);
    await fs.writeFile(path.join(d, 'report.html'), 'mine\n');
    const r = await sae(runs[0], '--out', d);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([`sae: error: --out ${d}: report.html exists there and was not written by sae report; choose another --out, or add --force to replace it`]);
    expect(await fs.readFile(path.join(d, 'report.html'), 'utf8')).toBe('mine\n');
    expect(await fs.readdir(d)).toEqual(['report.html']);
  }, 30_000);

  it('refuses an SVG of the user’s named as a figure, before writing anything', async () => {
    const d = path.join(root, 'users-svg');
    await fs.mkdir(d);
    const mine = '<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>';
    await fs.writeFile(path.join(d, 'l0-fvu.svg'), mine);
    await expect(writeReport(await loadRuns([runs[0]]), d)).rejects.toThrow(/l0-fvu\.svg exists there and was not written by sae report/);
    expect(await fs.readFile(path.join(d, 'l0-fvu.svg'), 'utf8')).toBe(mine);
    expect(await fs.readdir(d)).toEqual(['l0-fvu.svg']);
  });

  it('replaces the user’s report.html with --force', async () => {
    const d = path.join(root, 'users-report-forced');
    await fs.mkdir(d);
    await fs.writeFile(path.join(d, 'report.html'), 'mine\n');
    const r = await sae(runs[0], '--out', d, '--force');
    expect(r.code).toBe(0);
    expect(await fs.readFile(path.join(d, 'report.html'), 'utf8')).toContain('<meta name="generator" content="sae report">');
  }, 30_000);

  it('a rerun into its own report folder replaces its earlier files without --force', async () => {
    const d = path.join(root, 'rerun-report');
    expect((await sae(runs[0], '--out', d)).code).toBe(0);
    const r = await sae(runs[0], runs[1], '--out', d, '--json');
    expect(r.code).toBe(0);
    const files = JSON.parse(r.stdout).files as string[];
    for (const f of files) expect((await fs.readFile(f, 'utf8')).slice(0, 400)).toMatch(/data-generator="sae report"|<meta name="generator" content="sae report">/);
    expect(await fs.readFile(path.join(d, 'report.html'), 'utf8')).toContain(path.basename(runs[1]));
    // no lock is left behind once it is done
    expect((await fs.readdir(d)).filter((n) => n.startsWith('.sae-lock'))).toEqual([]);
  }, 30_000);

  it('refuses an --out another live process holds (exit 75), writing nothing there', async () => {
    const d = path.join(root, 'locked-report');
    await fs.mkdir(d);
    const holder = { pid: process.pid, host: os.hostname(), since: '2026-01-01T00:00:00.000Z', procStart: processStart(process.pid), command: 'sae report', token: 't' };
    await fs.writeFile(path.join(d, LOCK_FILE), JSON.stringify(holder));
    const r = await sae(runs[0], '--out', d);
    expect(r.code).toBe(LOCKED_EXIT);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^sae: error: --out ${d} is in use by sae report \\(pid ${process.pid} on `))]);
    expect(await fs.readdir(d)).toEqual([LOCK_FILE]);
  }, 30_000);
});

/** The page's DOM as headless Chromium leaves it, or null (with a warning) where it is absent. */
async function browserDom(html: string): Promise<string | null> {
  if (!existsSync(CHROMIUM)) {
    console.warn(`report.test: ${CHROMIUM} is absent; the headless-browser check is skipped (.ci/run installs chromium)`);
    return null;
  }
  const profile = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-chromium-'));
  try {
    const { stdout } = await run(
      CHROMIUM,
      ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`, '--dump-dom', pathToFileURL(html).href],
      { timeout: 60_000, maxBuffer: 64 << 20 },
    );
    return stdout;
  } finally {
    await fs.rm(profile, { recursive: true, force: true });
  }
}

const bars = (svg: string) => (svg.match(/aria-roledescription="bar"/g) ?? []).length;

describe('sae report --features: the feature browser and appendix D', () => {
  let a: FeatureFolder;
  let b: FeatureFolder;
  const sae = (...args: string[]) => run(process.execPath, [BIN, 'report', ...args]).then((r) => ({ code: 0, ...r })).catch((e) => e as { code: number; stdout: string; stderr: string });

  beforeAll(async () => {
    a = await writeFeatureFolder(path.join(root, 'features a'), { saes: [{ label: 'mc', F: 64, activation: 'mutual' }, { label: 'topk', F: 32 }], pages: { mc: [], topk: [] } });
    b = await writeFeatureFolder(path.join(root, 'features-b'), { saes: [{ label: 'fc', F: 48, activation: 'feature' }], pages: { fc: [] }, seed: 2 });
    // no other special tokens in b, and none anywhere in a's topk: EOS is in the legend through a's mc alone
    for (const [f, label] of [[b, 'fc'], [a, 'topk']] as const) {
      f.indices[label].perToken.byKind.eos = [];
      await fs.writeFile(path.join(f.dir, label, 'index.json'), JSON.stringify(f.indices[label]));
    }
  });

  it('links to each folder’s browser with a relative href that resolves to its index.html', async () => {
    const out = path.join(root, 'report-with-features');
    // --features takes one value: the run directory after it stays a run
    const r = await sae('--features', a.dir, runs[0], '--out', out, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).figures.map((f: { id: string }) => f.id)).toContain('features-per-token-kind');
    const html = await fs.readFile(path.join(out, 'report.html'), 'utf8');
    expect(html).toContain(path.basename(runs[0]));
    const section = html.match(/<section id="feature-browser">[\s\S]*?<\/section>/)![0];
    expect(section).toContain('<h2>Feature browser</h2>');
    for (const s of ['mc (mutual, 64 features)', 'topk (topk, 32 features)', 'synthetic-lm', 'blocks.0.hook_resid_post', '100000 tokens']) expect(section).toContain(s);
    const hrefs = [...section.matchAll(/<a class="feature-browser" href="([^"]+)"/g)].map((m) => m[1]);
    expect(hrefs).toEqual(['../features%20a/index.html']);
    const target = path.resolve(out, decodeURIComponent(hrefs[0]));
    expect(target).toBe(path.join(a.dir, 'index.html'));
    expect(existsSync(target)).toBe(true);
    // still self-contained: the one link is to a local file
    expect(html).not.toMatch(/<script(?![^>]*application\/json)/);
    expect(html).not.toMatch(/(src|href)="https?:/);
  }, 30_000);

  it('draws one bar per (SAE, kind, n) with tokens, the kinds present in its legend, also in the browser’s DOM', async () => {
    const out = path.join(root, 'report-kinds');
    const folders = await loadFeatureFolders([a.dir, b.dir]);
    const res = await writeReport([], out, { features: folders });
    expect(res.figures.map((f) => f.id)).toEqual(['features-per-token-kind']);
    let expected = 0;
    for (const f of [a, b]) for (const s of f.manifest.saes) for (const k of TOKEN_KINDS) expected += f.indices[s.label].perToken.byKind[k].filter((c) => c > 0).length;
    expect(expected).toBeGreaterThan(0);
    expect(res.figures[0].points).toBe(expected);
    const svg = await fs.readFile(path.join(out, 'features-per-token-kind.svg'), 'utf8');
    expect(bars(svg)).toBe(expected);
    // one panel per SAE, titled by folder and label
    for (const t of ['features a/mc (mutual, 64 features)', 'features a/topk (topk, 32 features)', 'features-b/fc (feature, 48 features)']) expect(svg).toContain(t);
    // the legend names every kind once (eos only through a's mc)
    for (const k of TOKEN_KINDS) expect(svg, k).toContain(`>${KIND_NAMES[k]}</text>`);
    const html = await fs.readFile(path.join(out, 'report.html'), 'utf8');
    const caption = html.match(/<figure id="fig-features-per-token-kind"[\s\S]*?<figcaption>([\s\S]*?)<\/figcaption>/)![1];
    for (const s of ['synthetic-lm at blocks.0.hook_resid_post', '100000 tokens', 'of synthetic', 'bimodal', 'BOS']) expect(caption).toContain(s);
    const dom = await browserDom(path.join(out, 'report.html'));
    if (dom === null) return;
    const fig = dom.match(/<figure id="fig-features-per-token-kind"[\s\S]*?<\/figure>/);
    expect(fig, 'the figure in the browser’s DOM').not.toBeNull();
    expect(bars(fig![0])).toBe(expected);
  }, 60_000);

  it('leaves an EOS kind with no tokens out of the legend', async () => {
    const res = buildFigures([], await loadFeatureFolders([b.dir]));
    const spec = JSON.stringify(res.figures[0].spec);
    expect(spec).not.toContain(KIND_NAMES.eos);
    expect(spec).toContain(KIND_NAMES.bos);
  });

  it('refuses a folder that is not a sae features folder, in one line', async () => {
    const empty = path.join(root, 'not-features');
    await fs.mkdir(empty, { recursive: true });
    const r = await sae(runs[0], '--features', empty, '--out', path.join(root, 'never-made-features'));
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([`sae: error: --features ${empty} is not a sae features folder: it has no features.json`]);
    expect(existsSync(path.join(root, 'never-made-features'))).toBe(false);
    await fs.writeFile(path.join(empty, 'features.json'), JSON.stringify({ schema: 'sae-splice/1' }));
    await expect(loadFeatureFolder(empty)).rejects.toThrow(`--features ${empty} is not a sae features folder: features.json has schema "sae-splice/1", not sae-features/1`);
  }, 30_000);

  it('refuses a features folder whose SAE index is missing', async () => {
    const broken = path.join(root, 'features-broken');
    await fs.cp(b.dir, broken, { recursive: true });
    await fs.rm(path.join(broken, 'fc', 'index.json'));
    await expect(loadFeatureFolder(broken)).rejects.toThrow(`--features ${broken}: fc/index.json is missing (an incomplete sae features folder)`);
  });

  it('without --features: no appendix-D figure, no browser section, and a note that names --features', async () => {
    const { figures, notes } = buildFigures(await loadRuns([runs[0]]));
    expect(figures.map((f) => f.id)).not.toContain('features-per-token-kind');
    expect(notes.filter((n) => n.includes('token kind'))).toEqual(['Features per token by token kind (appendix D): give --features with a folder written by `sae features`.']);
    const out = path.join(root, 'report-no-features');
    await writeReport(await loadRuns([runs[0]]), out);
    expect(await fs.readFile(path.join(out, 'report.html'), 'utf8')).not.toContain('Feature browser');
    expect(existsSync(path.join(out, 'features-per-token-kind.svg'))).toBe(false);
  });

  it('CLI: a report of --features folders alone, with no run notes', async () => {
    const out = path.join(root, 'report-features-only');
    const r = await sae('--features', a.dir, '--features', b.dir, '--out', out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(path.join(out, 'report.html') + '\n');
    expect(r.stderr).not.toContain('note:');
    const html = await fs.readFile(path.join(out, 'report.html'), 'utf8');
    expect([...html.matchAll(/<a class="feature-browser" href="([^"]+)"/g)].map((m) => m[1])).toEqual(['../features%20a/index.html', '../features-b/index.html']);
    expect(html).not.toContain('<table>');
  }, 30_000);

  it('--help describes --features', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'report', '--help']);
    const at = stdout.indexOf('--features=<value>...');
    expect(at).toBeGreaterThanOrEqual(0);
    expect(stdout.slice(at, at + 400).replace(/\s+/g, ' ')).toContain('a folder written by `sae features` (repeatable)');
  });
});
