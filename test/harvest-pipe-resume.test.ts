import { execFileSync, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openShards } from '../src/store/shard-set.js';

// A harvest killed mid-run and rerun with --ndjson into a pipe (issue 16, point 1): the rerun must
// hand the downstream the whole shard set, not only the shards it writes itself.
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const TOKENS = 6000;
let root: string;
let corpus: string;

const harvestArgs = (out: string) => ['harvest', corpus, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', out, '--ctx', '32', '--batch', '4', '--max-tokens', String(TOKENS), '--shard-rows', '500', '--quiet', '--ndjson'];

/** Run harvest until its journal records `shards` shards, then die as kill -9 leaves it. */
function killedHarvest(out: string, shards: number) {
  const r = spawnSync(process.execPath, [bin, ...harvestArgs(out)], { encoding: 'utf8', env: { ...process.env, SAE_TEST_KILL_AFTER_SHARDS: String(shards) } });
  expect(r.signal).toBe('SIGKILL');
  return r;
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-pipe-resume-'));
  corpus = path.join(root, 'docs.jsonl');
  const docs = Array.from({ length: 300 }, (_, i) => JSON.stringify({ text: `Entry ${i}. A ${['red', 'blue', 'green'][i % 3]} boat ${i % 4 ? 'drifts' : 'sinks'} past pier ${(i * 11) % 53} before the tide of day ${i}.` }));
  await fs.writeFile(corpus, docs.join('\n') + '\n');
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('a resumed harvest --ndjson', () => {
  it('announces every shard of the set, the killed run’s first, and its end line counts them all', async () => {
    const out = path.join(root, 'announce');
    killedHarvest(out, 3);
    await expect(fs.stat(path.join(out, 'manifest.json'))).rejects.toThrow();
    const r = spawnSync(process.execPath, [bin, ...harvestArgs(out)], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const end = lines.pop();
    const set = await openShards(out);
    expect(lines.map((l) => path.basename(l.shard))).toEqual(set.files.map((f) => path.basename(f.path)));
    expect(lines.reduce((a, l) => a + l.rows, 0)).toBe(TOKENS);
    expect(end).toEqual({ end: true, shards: set.files.length, rows: TOKENS });
  });

  it('piped into sae shuffle --data -, gives a shuffle of every row (the issue’s repro)', async () => {
    const out = path.join(root, 'repro');
    const shuffled = path.join(root, 'repro-shuffled');
    killedHarvest(out, 2);
    const cmd = `${process.execPath} ${bin} ${harvestArgs(out).join(' ')} | ${process.execPath} ${bin} shuffle --data - --out ${shuffled} --memory 1MB --quiet`;
    execFileSync('bash', ['-o', 'pipefail', '-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const manifest = JSON.parse(await fs.readFile(path.join(shuffled, 'manifest.json'), 'utf8'));
    expect(manifest.rows).toBe(TOKENS);
    expect((await openShards(shuffled)).rows).toBe(TOKENS);
  });

  it('with two hooks, its end line counts the shard lines of both', async () => {
    const out = path.join(root, 'two-hooks');
    const args = harvestArgs(out).concat('--hook', 'blocks.2.hook_resid_pre');
    const k = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, SAE_TEST_KILL_AFTER_SHARDS: '2' } });
    expect(k.signal).toBe('SIGKILL');
    const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const end = lines.pop();
    expect(end).toEqual({ end: true, shards: lines.length, rows: lines.reduce((a, l) => a + l.rows, 0) });
    expect(end.rows).toBe(2 * TOKENS);
  });
});
