import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DuckDBInstance } from '@duckdb/node-api';
import { PipeBatchSource, announceEnd, announceShard, firstShard, metaDigest, readAnnouncements } from '../src/stream/pipe.js';
import { openShards } from '../src/store/shard-set.js';
import { openBatchSource } from '../src/stream/prefetch.js';

// sae harvest as a user meets it: the compiled CLI on the fixture model (npm test builds dist/).
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
let root: string;
let corpus: string;

function sae(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectUserError(r: ReturnType<typeof sae>, pattern: RegExp) {
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines[lines.length - 1]).toMatch(/^sae: error: /);
  expect(lines.filter((l) => l.startsWith('sae: error:'))).toHaveLength(1);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

async function bytesOf(dir: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const f of (await fs.readdir(dir)).sort()) if (f.endsWith('.parquet') || f === 'manifest.json') out[f] = await fs.readFile(path.join(dir, f));
  return out;
}

const base = (out: string, ...more: string[]) => ['harvest', corpus, '--model', GPT2, '--out', out, '--hook', 'blocks.1.hook_resid_pre', '--ctx', '32', '--quiet', ...more];

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-harvest-cli-'));
  corpus = path.join(root, 'docs.jsonl');
  const lines = Array.from({ length: 300 }, (_, i) => JSON.stringify({ text: `Record ${i}. The ${['quick', 'lazy', 'old'][i % 3]} fox ${i % 7 ? 'runs' : 'sleeps'} near river ${i * 13 % 97}, and nobody knows why it did so on day ${i}.` }));
  await fs.writeFile(corpus, lines.join('\n') + '\n');
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae harvest', () => {
  it('writes shards that an independent Parquet reader (DuckDB) reads with the documented schema and metadata', async () => {
    const out = path.join(root, 'duck');
    const r = sae(...base(out, '--max-tokens', '3000', '--shard-rows', '1000'));
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(out);
    const db = await (await DuckDBInstance.create(':memory:')).connect();
    const glob = path.join(out, 'shard-*.parquet');
    const cols = (await db.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet('${glob}')`)).getRows().map((row) => [row[0], row[1]]);
    expect(cols).toEqual([
      ['activation', 'FLOAT[]'],
      ['token_id', 'INTEGER'],
      ['context_id', 'INTEGER'],
      ['position', 'INTEGER'],
      ['raw_mean', 'FLOAT'],
      ['raw_norm', 'FLOAT'],
    ]);
    const [[n, dmin, dmax, maxPos]] = (await db.runAndReadAll(`SELECT count(*), min(len(activation)), max(len(activation)), max(position) FROM read_parquet('${glob}')`)).getRows();
    expect([n, dmin, dmax, maxPos].map(Number)).toEqual([3000, 64, 64, 31]);
    // unit norm after centring (SPEC §3), within float32
    const [[worst]] = (await db.runAndReadAll(`SELECT max(abs(sqrt(list_sum(list_transform(activation, v -> v * v))) - 1)) FROM read_parquet('${glob}')`)).getRows();
    expect(Number(worst)).toBeLessThan(1e-5);
    const kv = Object.fromEntries(
      (await db.runAndReadAll(`SELECT decode(key), decode(value) FROM parquet_kv_metadata('${path.join(out, 'shard-00000.parquet')}')`)).getRows().map((row) => [row[0], row[1]]),
    );
    expect(kv).toMatchObject({ 'sae.hook': 'blocks.1.hook_resid_pre', 'sae.d': '64', 'sae.ctx': '32', 'sae.dtype': 'float32', 'sae.preprocessing': 'center_unit_norm' });
    expect(kv['sae.dataset']).toContain(`file:${corpus}#text`);
    expect(kv['sae.tokenizer']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('says "1 shard", not "1 shards", in its summary', () => {
    const r = sae(...base(path.join(root, 'one')).filter((a) => a !== '--quiet'), '--max-tokens', '100');
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/harvested 100 tokens at blocks\.1\.hook_resid_pre into 1 shard in /);
  });

  it('stores float16 activations when asked, widened to float32 on read', async () => {
    const out = path.join(root, 'f16');
    expect(sae(...base(out, '--max-tokens', '500', '--dtype', 'float16')).code).toBe(0);
    const set = await openShards(out);
    expect(set.meta.dtype).toBe('float16');
    expect(set.rows).toBe(500);
  });

  it('resumes after kill -9 at random points and writes the same bytes as an uninterrupted run', async () => {
    const whole = path.join(root, 'whole');
    const args = ['--max-tokens', '5000', '--shard-rows', '450', '--batch', '4'];
    expect(sae(...base(whole, ...args)).code).toBe(0);
    const expected = await bytesOf(whole);
    expect(Object.keys(expected).length).toBeGreaterThan(10);
    // kill after the k-th announced shard: the process is somewhere inside the next one
    for (const k of [1, 4, 7]) {
      const out = path.join(root, `killed-${k}`);
      await new Promise<void>((resolve) => {
        const child = spawn(process.execPath, [bin, ...base(out, ...args, '--ndjson')], { stdio: ['ignore', 'pipe', 'ignore'] });
        let seen = 0;
        child.stdout.on('data', (b: Buffer) => {
          seen += b.toString().split('\n').filter((l) => l.includes('"shard"')).length;
          if (seen >= k && !child.killed) child.kill('SIGKILL');
        });
        child.on('close', () => resolve());
      });
      await expect(fs.stat(path.join(out, 'manifest.json'))).rejects.toThrow();
      const again = sae(...base(out, ...args));
      expect(again.code, again.stderr).toBe(0);
      expect(await bytesOf(out), `killed after shard ${k}`).toEqual(expected);
      expect((await fs.readdir(out)).filter((f) => f.includes('.tmp-') || f.includes('.old-'))).toEqual([]);
    }
  });

  it('pipes through sae shuffle into sae train: harvest | shuffle | train', () => {
    const cmd =
      `node ${bin} ${base(path.join(root, 'p1'), '--max-tokens', '6000', '--shard-rows', '1000', '--ndjson').join(' ')}` +
      ` | node ${bin} shuffle --data - --out ${path.join(root, 'p2')} --memory 1MB --shard-rows 1500 --ndjson` +
      ` | node ${bin} train --data - --out ${path.join(root, 'p3')} --width 128 --k 4 --batch-size 256 --steps 30 --quiet --json`;
    const summary = JSON.parse(execFileSync('bash', ['-o', 'pipefail', '-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
    expect(summary.steps).toBe(30);
  });

  it('pipes into sae train --data -', () => {
    const out = path.join(root, 'piped');
    const run = path.join(root, 'piped-run');
    const cmd = `node ${bin} ${base(out, '--max-tokens', '6000', '--shard-rows', '1000', '--ndjson').join(' ')} | node ${bin} train --data - --out ${run} --width 128 --k 4 --batch-size 256 --steps 40 --quiet --json`;
    const summary = JSON.parse(execFileSync('bash', ['-c', cmd], { encoding: 'utf8' }));
    expect(summary.steps).toBe(40);
    expect(summary.d).toBe(64);
  });
});

describe('the pipe protocol', () => {
  it('lets the downstream start on the first shard before the upstream has finished', async () => {
    const out = path.join(root, 'proto');
    expect(sae(...base(out, '--max-tokens', '2000', '--shard-rows', '1000')).code).toBe(0);
    const set = await openShards(out);
    const digest = metaDigest(set.meta);
    const input = new PassThrough();
    input.write(announceShard({ shard: path.join(out, 'shard-00000.parquet'), rows: 1000, metadata: digest }));
    const it = readAnnouncements(input);
    const first = await firstShard(it);
    const src = new PipeBatchSource(it, first, 100, 500, 0, (all) => openBatchSource(all, { batchSize: 100, windowRows: 500, seed: 0, loop: true }, undefined, 0));
    const x = new Float32Array(100 * 64);
    // the upstream has announced one shard and is still running: batches flow anyway
    expect(await src.next(x)).toBe(true);
    input.write(announceShard({ shard: path.join(out, 'shard-00001.parquet'), rows: 1000, metadata: digest }));
    input.end(announceEnd(2, 2000));
    let n = 1;
    while (n < 25) {
      expect(await src.next(x)).toBe(true);
      n++;
    }
    await src.close();
  });

  it('fails the downstream with one line when the upstream dies mid-stream', async () => {
    const out = path.join(root, 'proto');
    const line = announceShard({ shard: path.join(out, 'shard-00000.parquet'), rows: 1000, metadata: metaDigest((await openShards(out)).meta) });
    const r = spawnSync(process.execPath, [bin, 'train', '--data', '-', '--out', path.join(root, 'orphan'), '--width', '128', '--k', '4', '--batch-size', '256', '--steps', '50'], { input: line, encoding: 'utf8' });
    expectUserError({ code: r.status, stdout: r.stdout, stderr: r.stderr }, /upstream stage ended without finishing.*--follow/);
  });
});

describe('bad input to sae harvest', () => {
  it('an empty corpus', async () => {
    const empty = path.join(root, 'empty.jsonl');
    await fs.writeFile(empty, '\n\n');
    expectUserError(sae('harvest', empty, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', path.join(root, 'x1')), /empty|no documents|no tokens/i);
  });

  it('a corrupt JSONL file, naming the line', async () => {
    const bad = path.join(root, 'bad.jsonl');
    await fs.writeFile(bad, '{"text": "fine"}\n{"text": broken\n');
    expectUserError(sae('harvest', bad, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', path.join(root, 'x2')), /line 2/);
  });

  it('a text field that does not exist, leaving no folder behind so that the corrected rerun runs', async () => {
    const out = path.join(root, 'x3');
    expectUserError(sae(...base(out, '--text-field', 'body')), /body/);
    await expect(fs.stat(out)).rejects.toThrow();
    expect(sae(...base(out, '--max-tokens', '100')).code).toBe(0);
  });

  it('a text shorter than one context: says so and suggests --pad; the --pad rerun into the same folder is accepted', async () => {
    const short = path.join(root, 'c5.txt');
    await fs.writeFile(short, 'Some words here.\n');
    const out = path.join(root, 'hc5');
    const args = ['harvest', short, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', out, '--quiet'];
    expectUserError(sae(...args), /the corpus yielded no tokens to harvest: its text is \d+ tokens, shorter than one --ctx 64 context .*add --pad/);
    await expect(fs.stat(out)).rejects.toThrow();
    // a folder the user made stays, with no journal claiming it
    await fs.mkdir(out);
    expectUserError(sae(...args), /shorter than one --ctx/);
    expect(await fs.readdir(out)).toEqual([]);
    // even a journal an older failed run left (complete, 0 shards) claims nothing
    await fs.writeFile(path.join(out, 'harvest.json'), JSON.stringify({ format: 'sae-harvest/1', config: { mode: 'concat' }, shards: 0, rows: 0, cursor: null, complete: true }));
    const r = sae(...args, '--pad');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect((await openShards(out)).rows).toBeGreaterThan(0);
  });

  it('refuses the folder of sae synth or sae shuffle even with --force, naming the command that may replace it, and changes nothing', async () => {
    const syn = path.join(root, 'syn');
    expect(sae('synth', '--out', syn, '--d', '8', '--features', '16', '--rows', '300', '--rows-per-shard', '100').code).toBe(0);
    const shuf = path.join(root, 'shuf');
    expect(sae('shuffle', '--data', syn, '--out', shuf, '--shard-rows', '100').code).toBe(0);
    for (const [dir, who] of [[syn, 'synth'], [shuf, 'shuffle']] as const) {
      const before = await bytesOf(dir);
      const names = (await fs.readdir(dir)).sort();
      for (const force of [[], ['--force']]) {
        expectUserError(sae(...base(dir, '--max-tokens', '100'), ...force), new RegExp(`holds .* which only sae ${who} --force may replace; choose another --out`));
        expect(await bytesOf(dir)).toEqual(before);
        expect((await fs.readdir(dir)).sort()).toEqual(names);
      }
    }
  });
  it('--ctx beyond the model’s positions', () =>
    expectUserError(sae('harvest', corpus, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', path.join(root, 'x4'), '--ctx', '65'), /--ctx 65 is longer than the model's 64 positions/));
  it('a hook the model lacks', () => expectUserError(sae(...base(path.join(root, 'x5')), '--hook', 'blocks.9.hook_resid_pre'), /layer 9 is out of range/));

  it('an output folder from another harvest', async () => {
    const out = path.join(root, 'taken');
    expect(sae(...base(out, '--max-tokens', '200')).code).toBe(0);
    expectUserError(sae('harvest', corpus, '--model', GPT2, '--out', out, '--hook', 'blocks.2.hook_resid_pre', '--max-tokens', '200', '--quiet'), /holds another harvest \(hooks/);
  });
});

// The disk filling up mid-shard: a 1 MB tmpfs (needs root to mount; skipped with a note otherwise).
const mnt = path.join(os.tmpdir(), `sae-full-${process.pid}`);
const canMount = (() => {
  try {
    execFileSync('mkdir', ['-p', mnt]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'ignore' });
    return true;
  } catch {
    console.warn('disk-full test skipped: cannot mount a tmpfs here (needs root)');
    return false;
  }
})();

describe.skipIf(!canMount)('a full disk', () => {
  afterAll(() => {
    execFileSync('umount', [mnt]);
  });

  it('fails cleanly with nothing partial visible, and the rerun completes once space is freed', async () => {
    const out = path.join(mnt, 'acts');
    const args = base(out, '--max-tokens', '6000', '--shard-rows', '1000');
    expectUserError(sae(...args), /no space left on device/);
    const left = await fs.readdir(out);
    expect(left.filter((f) => f.includes('.tmp-') || f === 'manifest.json')).toEqual([]);
    execFileSync('mount', ['-o', 'remount,size=64m', mnt]);
    const again = sae(...args);
    expect(again.code, again.stderr).toBe(0);
    expect((await openShards(out)).rows).toBe(6000);
  });
});
