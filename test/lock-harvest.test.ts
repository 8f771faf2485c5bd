import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { harvest, type HarvestConfig, type HarvestCorpus } from '../src/pipeline/harvest.js';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer, type LmTokenizer } from '../src/lm/tokenizer.js';
import { openShards } from '../src/store/shard-set.js';
import { LOCK_FILE, lockOutDir } from '../src/util/lock.js';

// One writer per --out (issue 16, point 2), harvest's share: the folder is locked while it runs.
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
let root: string;
let corpus: string;
let model: HookedTransformer;
let tok: LmTokenizer;

const cli = (out: string) => ['harvest', corpus, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', out, '--ctx', '16', '--max-tokens', '500', '--quiet'];

function sae(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function memoryCorpus(texts: string[]): HarvestCorpus<number> {
  return {
    describe: () => `memory:${texts.length}`,
    async *documents(from?: number | null) {
      for (let i = from === null || from === undefined ? 0 : from + 1; i < texts.length; i++) yield { text: texts[i], position: i };
    },
  };
}

const config = (): HarvestConfig => ({
  model: 'fixtures/hf-tiny/gpt2', revision: 'local', hooks: ['blocks.1.hook_resid_pre'], ctx: 16, mode: 'concat', skipBos: false, maxTokens: 200,
  shardRows: 100, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: 'memory', tokenizer: tok.digest, batch: 4,
});

/** The pid of a process that has exited: a holder that is certainly gone. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '0']);
  return r.pid!;
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-lock-harvest-'));
  corpus = path.join(root, 'docs.jsonl');
  const docs = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `Line ${i}: a small ${['cat', 'dog'][i % 2]} walks ${i} steps towards the ${['gate', 'hill', 'barn'][i % 3]}.` }));
  await fs.writeFile(corpus, docs.join('\n') + '\n');
  model = await HookedTransformer.load(GPT2);
  tok = await loadTokenizer(GPT2);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('harvest and the --out lock', () => {
  it('a second harvest into a folder another writer holds fails with exit 75 and one line naming the holder', async () => {
    const out = path.join(root, 'busy');
    await fs.mkdir(out);
    const held = await lockOutDir(out, 'sae harvest');
    try {
      const r = sae(cli(out));
      expect(r.code).toBe(75);
      const errors = r.stderr.trim().split('\n').filter((l) => l.startsWith('sae: error:'));
      expect(errors).toEqual([expect.stringMatching(new RegExp(`^sae: error: --out ${out} is in use by sae harvest \\(pid ${process.pid} on `))]);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      // the holder's folder is untouched: nothing but its lock
      expect(await fs.readdir(out)).toEqual([LOCK_FILE]);
    } finally {
      await held.release();
    }
  });

  it('a stale lock left by a dead process is taken over, and the harvest completes', async () => {
    const out = path.join(root, 'stale');
    await fs.mkdir(out);
    const stale = { pid: deadPid(), host: os.hostname(), since: new Date(0).toISOString(), procStart: null, command: 'sae harvest', token: 'stale' };
    await fs.writeFile(path.join(out, LOCK_FILE), JSON.stringify(stale) + '\n');
    const r = sae(cli(out));
    expect(r.code, r.stderr).toBe(0);
    expect((await openShards(out)).rows).toBe(500);
    expect((await fs.readdir(out)).filter((f) => f.startsWith(LOCK_FILE))).toEqual([]);
  });

  it('is held while the harvest runs and released when it returns', async () => {
    const out = path.join(root, 'held');
    let during: string[] = [];
    await harvest({
      out, config: config(), model, tokenizer: tok, corpus: memoryCorpus(Array.from({ length: 20 }, (_, i) => `Text number ${i} about nothing much at all.`)),
      onShard: async () => {
        during = await fs.readdir(out);
      },
    });
    expect(during).toContain(LOCK_FILE);
    expect(await fs.readdir(out)).not.toContain(LOCK_FILE);
  });

  it('a harvest that fails in a folder it created removes the folder, lock and all', async () => {
    const out = path.join(root, 'failed');
    const empty: HarvestCorpus<number> = { describe: () => 'memory:0', async *documents() {} };
    await expect(harvest({ out, config: config(), model, tokenizer: tok, corpus: empty })).rejects.toThrow(/no tokens/);
    await expect(fs.stat(out)).rejects.toThrow();
  });
});
