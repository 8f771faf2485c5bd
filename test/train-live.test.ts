import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { train, type LiveData } from '../src/pipeline/train/train.js';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer } from '../src/lm/tokenizer.js';
import { harvest } from '../src/pipeline/harvest.js';
import { openShards } from '../src/store/shard-set.js';
import { readRows } from '../src/store/row-reader.js';
import { LiveBatchSource } from '../src/stream/live-source.js';

const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const HOOK = 'blocks.1.hook_resid_pre';
let root: string;
let live: LiveData;
const TEXTS = Array.from({ length: 12 }, (_, i) => `Line ${i}: a ${['red', 'blue', 'green'][i % 3]} bird sang ${i * 3} songs by the lake at dawn.`);
const corpus = {
  describe: () => 'memory:12',
  async *documents(from?: number | null) {
    for (let i = from === null || from === undefined ? 0 : from + 1; i < TEXTS.length; i++) yield { text: TEXTS[i], position: i };
  },
};
const config = { activation: 'mutual', width: 128, k: 4, batchSize: 64, steps: 40, shuffleWindow: 150, logEvery: 5, checkpointEvery: 1000, lr: 1e-3 };

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-live-'));
  const model = await HookedTransformer.load(GPT2);
  const tokenizer = await loadTokenizer(GPT2);
  live = {
    model,
    tokenizer,
    corpus: corpus as unknown as LiveData['corpus'],
    rows: { hooks: [HOOK], ctx: 16, mode: 'concat', skipBos: false, batch: 3 },
    preprocessing: 'center_unit_norm',
    modelName: 'tiny-gpt2',
    description: 'live:tiny memory:12',
  };
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('training straight from the model (no disk)', () => {
  it('serves the rows harvest writes, preprocessed the same way, each once per epoch', async () => {
    const out = path.join(root, 'shards');
    await harvest({ out, model: live.model, tokenizer: live.tokenizer, corpus, config: { model: 'm', revision: 'r', hooks: [HOOK], ctx: 16, mode: 'concat', skipBos: false, maxTokens: null, shardRows: 10000, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: 'memory:12', tokenizer: live.tokenizer.digest, batch: 3 } });
    const set = await openShards(out);
    const all = await readRows(set, 0, 0, set.rows);
    const key = (a: Float32Array, i: number) => Array.from(a.subarray(i * 64, i * 64 + 4), (v) => v.toFixed(5)).join(',');
    const expected = Array.from({ length: set.rows }, (_, i) => key(all.acts, i)).sort();
    const src = new LiveBatchSource(live.model, live.tokenizer, corpus, live.rows, { batchSize: set.rows, windowRows: 400, seed: 3, preprocessing: 'center_unit_norm' });
    const x = new Float32Array(set.rows * 64);
    expect(await src.next(x)).toBe(true);
    const got = Array.from({ length: set.rows }, (_, i) => key(x, i));
    // a permutation of the harvested rows (the same multiset), not their order
    expect(got.slice().sort()).toEqual(expected);
    expect(got).not.toEqual(Array.from({ length: set.rows }, (_, i) => key(all.acts, i)));
  });

  it('resumes bit for bit across windows and epochs (the corpus position is in the checkpoint)', async () => {
    const whole = await train({ data: '', live, out: path.join(root, 'whole'), config });
    for (const stop of [3, 17]) {
      const cut = path.join(root, `cut-${stop}`);
      await train({ data: '', live, out: cut, config, stopAfterSteps: stop });
      const s = await train({ data: '', live, out: cut, config: {}, resume: cut });
      expect(s.steps).toBe(40);
      const a = await fs.readFile(path.join(whole.final!, 'sae.safetensors'));
      const b = await fs.readFile(path.join(s.final!, 'sae.safetensors'));
      expect(a.equals(b), `stopped after ${stop}`).toBe(true);
    }
  });

  it('logs splice-eval every N steps without changing what is trained', async () => {
    const plain = await train({ data: '', live, out: path.join(root, 'plain'), config: { ...config, steps: 10 } });
    const out = path.join(root, 'with-eval');
    const s = await train({ data: '', live, out, config: { ...config, steps: 10 }, spliceEvery: { steps: 5, maxTokens: 40, corpus } });
    const lines = (await fs.readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    const splices = lines.filter((l) => l.kind === 'splice');
    expect(splices.map((l) => l.step)).toEqual([5, 10]);
    for (const l of splices) {
      expect(l.tokens).toBeGreaterThanOrEqual(40);
      expect(Number.isFinite(l.lossRecovered)).toBe(true);
      expect(l.specialTokens).toBe('excluded');
    }
    const a = await fs.readFile(path.join(plain.final!, 'sae.safetensors'));
    const b = await fs.readFile(path.join(s.final!, 'sae.safetensors'));
    expect(a.equals(b)).toBe(true);
  });

  it('refuses to resume on another corpus or hook', async () => {
    const out = path.join(root, 'other');
    await train({ data: '', live, out, config, stopAfterSteps: 2 });
    await expect(train({ data: '', live: { ...live, description: 'live:tiny other' }, out, config: {}, resume: out })).rejects.toThrow(/trained on live:tiny memory:12; this command harvests live:tiny other/);
  });
});
