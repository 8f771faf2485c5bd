import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { harvest, type HarvestConfig, type HarvestCorpus } from '../src/pipeline/harvest.js';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer, type LmTokenizer } from '../src/lm/tokenizer.js';
import { openShards } from '../src/store/shard-set.js';
import { readRows } from '../src/store/row-reader.js';
import { UserError } from '../src/util/errors.js';

const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
let root: string;
let model: HookedTransformer;
let tok: LmTokenizer;

const TEXTS = Array.from({ length: 40 }, (_, i) => `Document ${i}: the ${['quick', 'lazy', 'old', 'warm'][i % 4]} fox number ${i * 7} jumps over ${i % 3 ? 'a dog' : 'the moon'} while it is ${['raining', 'sunny'][i % 2]}.`);

/** A corpus over in-memory texts; position = index of the document. */
function memoryCorpus(texts: string[]): HarvestCorpus<number> {
  return {
    describe: () => `memory:${texts.length}`,
    async *documents(from?: number | null) {
      for (let i = from === null || from === undefined ? 0 : from + 1; i < texts.length; i++) yield { text: texts[i], position: i };
    },
  };
}

function config(over: Partial<HarvestConfig> = {}): HarvestConfig {
  return {
    model: 'fixtures/hf-tiny/gpt2', revision: 'local', hooks: ['blocks.1.hook_resid_pre'], ctx: 16, mode: 'concat', skipBos: false, maxTokens: null,
    shardRows: 100, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: 'memory:40', tokenizer: tok.digest, batch: 4, ...over,
  };
}

async function shardBytes(dir: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const f of (await fs.readdir(dir)).sort()) if (f.endsWith('.parquet') || f === 'manifest.json') out[f] = await fs.readFile(path.join(dir, f));
  return out;
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-harvest-'));
  model = await HookedTransformer.load(GPT2);
  tok = await loadTokenizer(GPT2);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('harvest', () => {
  it('writes the host LM’s hook activations, preprocessed, with raw mean and norm that map back', async () => {
    const out = path.join(root, 'one');
    const s = await harvest({ out, config: config(), model, tokenizer: tok, corpus: memoryCorpus(TEXTS) });
    expect(s.complete).toBe(true);
    const set = await openShards(out);
    expect(set.rows).toBe(s.rows);
    expect(set.meta).toMatchObject({ hook: 'blocks.1.hook_resid_pre', ctx: 16, d: 64, tokenizer: tok.digest, preprocessing: 'center_unit_norm' });
    const chunk = await readRows(set, 0, 0, set.files[0].rows);
    // recompute the first contexts: BOS, then the documents joined with EOS
    const stream: number[] = [];
    for (const t of TEXTS) stream.push(...tok.encode(t), tok.eosId);
    const ctxs = 3;
    const ids = new Int32Array(ctxs * 16);
    for (let c = 0; c < ctxs; c++) {
      ids[c * 16] = tok.bosId;
      for (let t = 1; t < 16; t++) ids[c * 16 + t] = stream[c * 15 + t - 1];
    }
    const ref = model.run(ids, ctxs, 16, { capture: ['blocks.1.hook_resid_pre'] }).captured['blocks.1.hook_resid_pre'];
    const d = 64;
    let worst = 0;
    for (let r = 0; r < ctxs * 16; r++) {
      expect(chunk.tokenIds![r]).toBe(ids[r]);
      expect(chunk.positions![r]).toBe(r % 16);
      expect(chunk.contextIds![r]).toBe(Math.floor(r / 16));
      for (let j = 0; j < d; j++) worst = Math.max(worst, Math.abs(chunk.acts[r * d + j] * chunk.rawNorm![r] + chunk.rawMean![r] - ref[r * d + j]));
    }
    expect(worst).toBeLessThan(1e-4);
  });

  it('drops position 0 with skipBos', async () => {
    const out = path.join(root, 'skip');
    const s = await harvest({ out, config: config({ skipBos: true, maxTokens: 60 }), model, tokenizer: tok, corpus: memoryCorpus(TEXTS) });
    expect(s.rows).toBe(60);
    const set = await openShards(out);
    const chunk = await readRows(set, 0, 0, 60);
    expect(Array.from(chunk.positions!).every((p) => p >= 1)).toBe(true);
  });

  it('writes one shard set per hook from one forward pass', async () => {
    const out = path.join(root, 'two');
    const hooks = ['blocks.0.hook_mlp_out', 'blocks.2.hook_resid_post'];
    const s = await harvest({ out, config: config({ hooks, maxTokens: 200 }), model, tokenizer: tok, corpus: memoryCorpus(TEXTS) });
    for (const h of hooks) {
      const set = await openShards(s.dirs[h]);
      expect(set.meta.hook).toBe(h);
      expect(set.rows).toBe(200);
    }
  });

  it('resumes after an interruption and writes the same bytes as an uninterrupted run', async () => {
    const hooks = ['blocks.1.hook_resid_pre', 'blocks.2.hook_attn_out'];
    const cfg = config({ hooks, shardRows: 157, skipBos: true });
    const whole = path.join(root, 'whole');
    await harvest({ out: whole, config: cfg, model, tokenizer: tok, corpus: memoryCorpus(TEXTS) });
    for (const stopAt of [1, 3]) {
      const cut = path.join(root, `cut-${stopAt}`);
      const first = await harvest({ out: cut, config: cfg, model, tokenizer: tok, corpus: memoryCorpus(TEXTS), stopAfterBatches: stopAt });
      expect(first.complete).toBe(false);
      await expect(fs.stat(path.join(cut, hooks[0], 'manifest.json'))).rejects.toThrow();
      const second = await harvest({ out: cut, config: cfg, model, tokenizer: tok, corpus: memoryCorpus(TEXTS) });
      expect(second.complete).toBe(true);
      for (const h of hooks) expect(await shardBytes(path.join(cut, h)), `stop after ${stopAt}, ${h}`).toEqual(await shardBytes(path.join(whole, h)));
    }
  });

  it('a resumed multi-hook harvest reports every shard of every hook, in the order an uninterrupted run does', async () => {
    const hooks = ['blocks.1.hook_resid_pre', 'blocks.2.hook_attn_out'];
    const cfg = config({ hooks, shardRows: 97 });
    const calls = (log: string[]) => (e: { hook: string; shard: string; rows: number }) => {
      log.push(`${e.hook} ${path.basename(e.shard)} ${e.rows}`);
    };
    const whole: string[] = [];
    await harvest({ out: path.join(root, 'order-whole'), config: cfg, model, tokenizer: tok, corpus: memoryCorpus(TEXTS), onShard: calls(whole) });
    const out = path.join(root, 'order-cut');
    const first = await harvest({ out, config: cfg, model, tokenizer: tok, corpus: memoryCorpus(TEXTS), stopAfterBatches: 5 });
    expect(first.shards).toBeGreaterThan(1);
    const resumed: string[] = [];
    const s = await harvest({ out, config: cfg, model, tokenizer: tok, corpus: memoryCorpus(TEXTS), onShard: calls(resumed) });
    expect(resumed).toEqual(whole);
    expect(resumed).toHaveLength(s.shards * hooks.length);
  });

  it('NaN from the model: the error names the model, the hook and its weights as the likely cause', async () => {
    const out = path.join(root, 'nan');
    const embed = model.weights.embed.slice();
    // one token's embedding broken, as a corrupt checkpoint would have it
    const bad = tok.encode(TEXTS[0])[0];
    embed.fill(NaN, bad * 64, (bad + 1) * 64);
    const broken = new HookedTransformer(model.cfg, { ...model.weights, embed }, model.kernels, GPT2);
    const err = await harvest({ out, config: config(), model: broken, tokenizer: tok, corpus: memoryCorpus(TEXTS) }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(
      new RegExp(`^model fixtures/hf-tiny/gpt2 produced NaN at blocks\\.1\\.hook_resid_pre \\(context \\d+, position \\d+, token ${bad}\\): its weights \\(or a numerical overflow in its forward pass\\) are the likely cause`),
    );
    await expect(fs.stat(out)).rejects.toThrow();
  });

  it('refuses an output folder that holds another harvest', async () => {
    const out = path.join(root, 'other');
    // stopped with shards written: the journal claims them
    const s = await harvest({ out, config: config({ maxTokens: 50, shardRows: 10 }), model, tokenizer: tok, corpus: memoryCorpus(TEXTS), stopAfterBatches: 1 });
    expect(s.shards).toBeGreaterThan(0);
    await expect(harvest({ out, config: config({ maxTokens: 50, shardRows: 10, hooks: ['blocks.0.hook_resid_pre'] }), model, tokenizer: tok, corpus: memoryCorpus(TEXTS) })).rejects.toThrow(/holds another harvest \(hooks/);
  });

  it('lets a harvest with other settings take over a folder whose journal records no shard', async () => {
    const out = path.join(root, 'zero');
    const s = await harvest({ out, config: config({ maxTokens: 50 }), model, tokenizer: tok, corpus: memoryCorpus(TEXTS), stopAfterBatches: 1 });
    expect(s.shards).toBe(0);
    const r = await harvest({ out, config: config({ maxTokens: 50, hooks: ['blocks.0.hook_resid_pre'] }), model, tokenizer: tok, corpus: memoryCorpus(TEXTS) });
    expect(r.complete).toBe(true);
    expect(r.rows).toBe(50);
  });
});
