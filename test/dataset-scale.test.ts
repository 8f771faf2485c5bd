import { execFileSync, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { harvest, type HarvestConfig, type HarvestCorpus } from '../src/pipeline/harvest.js';
import { train, type LiveData } from '../src/pipeline/train/train.js';
import { shuffleShards } from '../src/pipeline/shuffle/shuffle.js';
import { writeSynth } from '../src/pipeline/synth.js';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer, type LmTokenizer } from '../src/lm/tokenizer.js';
import { openShards } from '../src/store/shard-set.js';
import { readRows } from '../src/store/row-reader.js';
import { LiveBatchSource } from '../src/stream/live-source.js';
import { openSae } from '../src/sae/sae.js';
import { saveCheckpoint, type SaeCfgJson } from '../src/sae/checkpoint.js';
import { allocParams } from '../src/kernels/params.js';
import { Rng } from '../src/util/rng.js';
import { UserError } from '../src/util/errors.js';

// dataset_scale preprocessing (SPEC §3, SAELens' expected_average_only_in) end to end: estimated by
// harvest and live training, recorded in shards and checkpoints, inverted by splice-eval.
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const HOOK = 'blocks.1.hook_resid_pre';
const D = 64;
let root: string;
let model: HookedTransformer;
let tok: LmTokenizer;

const TEXTS = Array.from({ length: 40 }, (_, i) => `Document ${i}: the ${['quick', 'lazy', 'old', 'warm'][i % 4]} fox number ${i * 7} jumps over ${i % 3 ? 'a dog' : 'the moon'} while it is ${['raining', 'sunny'][i % 2]}.`);

function memoryCorpus(texts: string[]): HarvestCorpus<number> {
  return {
    describe: () => `memory:${texts.length}`,
    async *documents(from?: number | null) {
      for (let i = from === null || from === undefined ? 0 : from + 1; i < texts.length; i++) yield { text: texts[i], position: i };
    },
  };
}
const corpus = memoryCorpus(TEXTS);

function config(over: Partial<HarvestConfig> = {}): HarvestConfig {
  return {
    model: GPT2, revision: 'local', hooks: [HOOK], ctx: 16, mode: 'concat', skipBos: false, maxTokens: null,
    shardRows: 100, dtype: 'float32', preprocessing: 'dataset_scale', scaleRows: 150, corpus: 'memory:40', tokenizer: tok.digest, batch: 4, ...over,
  };
}

/** sqrt(d) / mean‖x‖ over the first n rows, computed here independently of src/. */
function expectedScale(x: Float32Array, n: number, d: number): number {
  let sum = 0;
  for (let r = 0; r < n; r++) sum += Math.hypot(...x.subarray(r * d, (r + 1) * d));
  return Math.sqrt(d) / (sum / n);
}

async function allRows(dir: string): Promise<Float32Array> {
  const set = await openShards(dir);
  const out = new Float32Array(set.rows * set.meta.d);
  let at = 0;
  for (const [i, f] of set.files.entries()) {
    out.set((await readRows(set, i, 0, f.rows)).acts, at);
    at += f.rows * set.meta.d;
  }
  return out;
}

async function shardBytes(dir: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const f of (await fs.readdir(dir)).sort()) if (f.endsWith('.parquet') || f === 'manifest.json') out[f] = await fs.readFile(path.join(dir, f));
  return out;
}

const cli = (args: string[], env: Record<string, string> = {}) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });

let raw: Float32Array;
let scaled: string;
let scaleA: number;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-dataset-scale-'));
  model = await HookedTransformer.load(GPT2);
  tok = await loadTokenizer(GPT2);
  await harvest({ out: path.join(root, 'raw'), config: config({ preprocessing: 'none', scaleRows: undefined }), model, tokenizer: tok, corpus });
  raw = await allRows(path.join(root, 'raw'));
  scaled = path.join(root, 'scaled');
  await harvest({ out: scaled, config: config(), model, tokenizer: tok, corpus });
  scaleA = (await openShards(scaled)).meta.scale!;
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('harvest --preprocessing dataset_scale', () => {
  it('records s = sqrt(d)/mean‖x‖ of the first scaleRows raw rows in every shard', async () => {
    const set = await openShards(scaled);
    expect(set.files.length).toBeGreaterThan(2);
    const want = expectedScale(raw, 150, D);
    expect(Math.abs(scaleA - want) / want).toBeLessThan(1e-12);
    // the estimate is over the first 150 rows, not all of them
    expect(Math.abs(expectedScale(raw, raw.length / D, D) - want) / want).toBeGreaterThan(1e-6);
    for (const f of set.files) expect((await openShards(f.path)).meta.scale).toBe(scaleA);
  });

  it('writes every row as the raw row times s', async () => {
    const rows = await allRows(scaled);
    expect(rows.length).toBe(raw.length);
    const s = Math.fround(scaleA);
    let mismatches = 0;
    for (let i = 0; i < raw.length; i++) if (rows[i] !== Math.fround(raw[i] * s)) mismatches++;
    expect(mismatches).toBe(0);
  });

  it('estimates over all the rows when the harvest has fewer than scaleRows', async () => {
    const out = path.join(root, 'short');
    await harvest({ out, config: config({ maxTokens: 90, scaleRows: 100_000 }), model, tokenizer: tok, corpus });
    const want = expectedScale(raw, 90, D);
    expect(Math.abs((await openShards(out)).meta.scale! - want) / want).toBeLessThan(1e-12);
  });

  it('resumed after a stop before or after the estimate, writes the bytes of an uninterrupted run', async () => {
    const hooks = [HOOK, 'blocks.2.hook_resid_pre'];
    const cfg = config({ hooks, shardRows: 70, scaleRows: 120 });
    const whole = path.join(root, 'whole');
    await harvest({ out: whole, config: cfg, model, tokenizer: tok, corpus });
    // 4 contexts of 16 rows a batch: stopped after 1 batch no shard exists yet; after 4, shards hold the scale
    for (const stopAt of [1, 4]) {
      const cut = path.join(root, `cut-${stopAt}`);
      const first = await harvest({ out: cut, config: cfg, model, tokenizer: tok, corpus, stopAfterBatches: stopAt });
      expect(first.shards).toBe(stopAt === 1 ? 0 : 3);
      await harvest({ out: cut, config: cfg, model, tokenizer: tok, corpus });
      for (const h of hooks) expect(await shardBytes(path.join(cut, h)), `stop after ${stopAt}, ${h}`).toEqual(await shardBytes(path.join(whole, h)));
    }
    // each hook has its own scale
    expect((await openShards(path.join(whole, hooks[0]))).meta.scale).not.toBe((await openShards(path.join(whole, hooks[1]))).meta.scale);
  });

  it('killed (kill -9) and rerun from the command line, gives the shards of an uninterrupted run', async () => {
    const docs = path.join(root, 'docs.jsonl');
    await fs.writeFile(docs, TEXTS.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
    const args = (out: string) => ['harvest', docs, '--model', GPT2, '--hook', HOOK, '--out', out, '--ctx', '16', '--batch', '4', '--shard-rows', '100', '--preprocessing', 'dataset_scale', '--scale-rows', '250', '--quiet'];
    const whole = path.join(root, 'cli-whole');
    expect(cli(args(whole)).status).toBe(0);
    const cut = path.join(root, 'cli-cut');
    expect(cli(args(cut), { SAE_TEST_KILL_AFTER_SHARDS: '3' }).signal).toBe('SIGKILL');
    expect((await fs.readdir(cut)).filter((f) => f.endsWith('.parquet'))).toHaveLength(3);
    const r = cli(args(cut));
    expect(r.status, r.stderr).toBe(0);
    expect(await shardBytes(cut)).toEqual(await shardBytes(whole));
  });

  it('refuses --scale-rows without dataset_scale', () => {
    const r = cli(['harvest', '--model', GPT2, '--hook', HOOK, '--out', path.join(root, 'no'), '--max-tokens', '50', '--scale-rows', '10']);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe('sae: error: --scale-rows applies to --preprocessing dataset_scale\n');
  });
});

describe('training on dataset_scale', () => {
  const cfg = { activation: 'topk', width: 128, k: 4, batchSize: 32, steps: 6, logEvery: 100, checkpointEvery: 1000, lr: 1e-3 };
  let other: string;
  let scaleB: number;
  beforeAll(async () => {
    other = path.join(root, 'scaled-other');
    await harvest({ out: other, config: config({ scaleRows: 40 }), model, tokenizer: tok, corpus });
    scaleB = (await openShards(other)).meta.scale!;
  });

  it('records the shards’ scale in cfg.json as dataset_scale, and openSae exposes it', async () => {
    const s = await train({ data: scaled, out: path.join(root, 'run'), config: cfg });
    const j = JSON.parse(await fs.readFile(path.join(s.final!, 'cfg.json'), 'utf8')) as SaeCfgJson;
    expect(j.normalize_activations).toBe('dataset_scale');
    expect(j.dataset_scale).toBe(scaleA);
    expect((await openSae(s.out)).scale).toBe(scaleA);
  });

  it('refuses to resume on shards of another scale, naming both', async () => {
    expect(Math.abs(scaleB - scaleA) / scaleA).toBeGreaterThan(1e-3);
    const out = path.join(root, 'resume-other');
    await train({ data: scaled, out, config: cfg, stopAfterSteps: 2 });
    const err = await train({ data: other, out, config: {}, resume: out }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toBe(`shards have dataset scale ${scaleB} but the SAE was trained at dataset scale ${scaleA}`);
  });

  it('refuses --init-from a checkpoint of another scale', async () => {
    const err = await train({ data: other, out: path.join(root, 'init-other'), config: cfg, initFrom: path.join(root, 'run') }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(/^shards have dataset scale \S+ but the SAE was trained at dataset scale \S+$/);
  });

  it('eval refuses shards whose scale is not the SAE’s (checkData)', async () => {
    const sae = await openSae(path.join(root, 'run'));
    const r = cli(['eval', '--checkpoint', path.join(root, 'run'), '--data', other]);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(`sae: error: shards have dataset scale ${scaleB} but the SAE was trained at dataset scale ${scaleA}\n`);
    // within the tolerance (1e-6 relative) the scale is the same
    const meta = (await openShards(scaled)).meta;
    expect(() => sae.checkData({ ...meta, scale: scaleA * (1 + 1e-8) })).not.toThrow();
    expect(() => sae.checkData({ ...meta, scale: scaleA * (1 + 1e-5) })).toThrow(UserError);
  });
});

describe('the SAE front door (openSae)', () => {
  async function withCfg(name: string, over: Partial<SaeCfgJson>): Promise<string> {
    const dir = path.join(root, name);
    const cfg: SaeCfgJson = { architecture: 'jumprelu', d_in: D, d_sae: 8, dtype: 'float32', hook_name: HOOK, model_name: GPT2, normalize_activations: 'none', apply_b_dec_to_input: true, activation_fn_kwargs: {}, format: 'sae-checkpoint/1', ...over };
    await saveCheckpoint(dir, cfg, allocParams(D, 8), { threshold: new Float32Array(8) });
    return dir;
  }

  it('refuses a normalize_activations it does not know, in one line naming the checkpoint', async () => {
    const dir = await withCfg('bad-norm', { normalize_activations: 'layer_norm' });
    await expect(openSae(dir)).rejects.toThrow(new UserError(`checkpoint ${dir}: cfg.json has normalize_activations "layer_norm", not one of center_unit_norm, none, dataset_scale`));
  });

  it('refuses dataset_scale without a positive dataset_scale factor', async () => {
    const dir = await withCfg('no-scale', { normalize_activations: 'dataset_scale' });
    await expect(openSae(dir)).rejects.toThrow(/^checkpoint \S+: normalize_activations is dataset_scale but cfg.json records no positive dataset_scale \(got undefined\); add the sae.scale of the shards it was trained on as dataset_scale$/);
  });

  it('defines scale only for dataset_scale', async () => {
    expect((await openSae(await withCfg('plain', {}))).scale).toBeUndefined();
    expect((await openSae(await withCfg('scaled-sae', { normalize_activations: 'dataset_scale', dataset_scale: 0.3 }))).scale).toBe(0.3);
  });
});

describe('splice-eval of a dataset_scale SAE', () => {
  it('gives the losses of the equivalent none SAE (W_enc/s, s·b_dec, s·W_dec): raw activations are scaled in and the reconstruction divided back out', async () => {
    const F = 96;
    const s = 0.3;
    const rng = new Rng(11);
    const none = allocParams(D, F);
    for (let i = 0; i < none.WencT.length; i++) none.WencT[i] = (rng.next() - 0.5) * 0.5;
    for (let i = 0; i < none.Wdec.length; i++) none.Wdec[i] = (rng.next() - 0.5) * 0.2;
    for (let i = 0; i < F; i++) none.bEnc[i] = (rng.next() - 0.5) * 0.1;
    for (let i = 0; i < D; i++) none.bDec[i] = (rng.next() - 0.5) * 0.5;
    // on x' = s·x: W_enc'(x' − b_dec') = W_enc(x − b_dec), and x̂'/s = W_dec z + b_dec
    const scaledP = allocParams(D, F);
    scaledP.WencT.set(none.WencT.map((v) => v / s));
    scaledP.Wdec.set(none.Wdec.map((v) => v * s));
    scaledP.bEnc.set(none.bEnc);
    scaledP.bDec.set(none.bDec.map((v) => v * s));
    const threshold = Float32Array.from({ length: F }, () => rng.next() * 0.2);
    const cfg: SaeCfgJson = { architecture: 'jumprelu', d_in: D, d_sae: F, dtype: 'float32', hook_name: HOOK, model_name: GPT2, normalize_activations: 'none', apply_b_dec_to_input: true, activation_fn_kwargs: {}, format: 'sae-checkpoint/1' };
    await saveCheckpoint(path.join(root, 'sae-none'), cfg, none, { threshold });
    await saveCheckpoint(path.join(root, 'sae-ds'), { ...cfg, normalize_activations: 'dataset_scale', dataset_scale: s }, scaledP, { threshold });
    const run = (ck: string) => {
      const r = cli(['splice-eval', '--checkpoint', path.join(root, ck), '--model', GPT2, '--max-tokens', '300', '--json', '--quiet']);
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { cleanLoss: number; zeroLoss: number; spliced: Array<{ loss: number; kl: number; lossRecovered: number }> };
    };
    const a = run('sae-none');
    const b = run('sae-ds');
    expect(b.cleanLoss).toBe(a.cleanLoss);
    // a splice that does nothing would recover ~100 %: the random SAE is far from that
    expect(Math.abs(a.spliced[0].loss - a.cleanLoss)).toBeGreaterThan(1e-3);
    expect(b.spliced[0].loss).toBeCloseTo(a.spliced[0].loss, 5);
    expect(b.spliced[0].kl).toBeCloseTo(a.spliced[0].kl, 5);
    expect(b.spliced[0].lossRecovered).toBeCloseTo(a.spliced[0].lossRecovered, 3);
  });
});

describe('training from the model on dataset_scale', () => {
  const TXT = TEXTS.slice(0, 12);
  const liveCorpus = memoryCorpus(TXT);
  const rows = { hooks: [HOOK], ctx: 16, mode: 'concat' as const, skipBos: false, batch: 3 };
  const cfg = { activation: 'mutual', width: 128, k: 4, batchSize: 64, steps: 40, shuffleWindow: 150, logEvery: 5, checkpointEvery: 1000, lr: 1e-3 };
  let live: LiveData;
  let liveRaw: Float32Array;
  beforeAll(async () => {
    live = { model, tokenizer: tok, corpus: liveCorpus as unknown as LiveData['corpus'], rows, preprocessing: 'dataset_scale', scaleRows: 100, modelName: 'tiny-gpt2', description: 'live:tiny memory:12' };
    const out = path.join(root, 'live-raw');
    await harvest({ out, config: config({ preprocessing: 'none', scaleRows: undefined, batch: 3, shardRows: 10_000, corpus: 'memory:12' }), model, tokenizer: tok, corpus: liveCorpus });
    liveRaw = await allRows(out);
  });

  it('estimates s over the first scaleRows rows of the corpus and records it in cfg.json', async () => {
    const s = await train({ data: '', live, out: path.join(root, 'live'), config: { ...cfg, steps: 5 } });
    const j = JSON.parse(await fs.readFile(path.join(s.final!, 'cfg.json'), 'utf8')) as SaeCfgJson;
    expect(j.normalize_activations).toBe('dataset_scale');
    const want = expectedScale(liveRaw, 100, D);
    expect(Math.abs(j.dataset_scale! - want) / want).toBeLessThan(1e-12);
  });

  it('serves the raw rows times s', async () => {
    const n = liveRaw.length / D;
    const src = new LiveBatchSource(model, tok, liveCorpus, rows, { batchSize: n, windowRows: 400, seed: 3, preprocessing: 'dataset_scale', scale: 0.7 });
    const x = new Float32Array(n * D);
    await src.next(x);
    const key = (a: Float32Array, i: number) => Array.from(a.subarray(i * D, (i + 1) * D)).join(',');
    const want = Float32Array.from(liveRaw, (v) => Math.fround(v * Math.fround(0.7)));
    expect(Array.from({ length: n }, (_, i) => key(x, i)).sort()).toEqual(Array.from({ length: n }, (_, i) => key(want, i)).sort());
  });

  it('runs its periodic splice-eval at the recorded scale', async () => {
    const out = path.join(root, 'live-eval');
    await train({ data: '', live, out, config: { ...cfg, steps: 5 }, spliceEvery: { steps: 5, maxTokens: 40, corpus: liveCorpus } });
    const lines = (await fs.readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    const splice = lines.find((l) => l.kind === 'splice');
    expect(Number.isFinite(splice?.lossRecovered)).toBe(true);
  });

  it('refuses --scale-rows without --model', () => {
    const r = cli(['train', '--data', scaled, '--out', path.join(root, 'no-run'), '--scale-rows', '10']);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe('sae: error: --scale-rows applies to training from the model (--model); shards record their own dataset scale\n');
  });

  it('resumes bit for bit, at the scale its checkpoint records (never estimated again)', async () => {
    const whole = await train({ data: '', live, out: path.join(root, 'live-whole'), config: cfg });
    for (const stop of [3, 17]) {
      const cut = path.join(root, `live-cut-${stop}`);
      await train({ data: '', live, out: cut, config: cfg, stopAfterSteps: stop });
      // another scaleRows would estimate another s: the resume must take the recorded one
      const s = await train({ data: '', live: { ...live, scaleRows: 7 }, out: cut, config: {}, resume: cut });
      expect(s.steps).toBe(40);
      const a = await fs.readFile(path.join(whole.final!, 'sae.safetensors'));
      const b = await fs.readFile(path.join(s.final!, 'sae.safetensors'));
      expect(a.equals(b), `stopped after ${stop}`).toBe(true);
      const j = JSON.parse(await fs.readFile(path.join(s.final!, 'cfg.json'), 'utf8')) as SaeCfgJson;
      expect(j.dataset_scale).toBe(JSON.parse(await fs.readFile(path.join(whole.final!, 'cfg.json'), 'utf8')).dataset_scale);
    }
  });
});

describe('dataset_scale through shuffle and pipes', () => {
  it('sae shuffle keeps the scale in its shards’ metadata', async () => {
    const syn = path.join(root, 'syn');
    await writeSynth({ out: syn, d: 8, fTrue: 16, kTrue: 2, rows: 400, rowsPerShard: 100, seed: 1, preprocessing: 'dataset_scale' });
    const scale = (await openShards(syn)).meta.scale!;
    expect(scale).toBeGreaterThan(0);
    const out = path.join(root, 'syn-shuffled');
    await shuffleShards({ data: syn, out, memory: 1 << 20, shardRows: 150 });
    const set = await openShards(out);
    expect(set.meta.preprocessing).toBe('dataset_scale');
    for (const f of set.files) expect((await openShards(f.path)).meta.scale).toBe(scale);
  });

  it('harvest --ndjson | train --data -: the checkpoint records the scale the piped shards carry', async () => {
    const acts = path.join(root, 'piped-acts');
    const run = path.join(root, 'piped-run');
    const cmd =
      `${process.execPath} ${bin} harvest --model ${GPT2} --hook ${HOOK} --out ${acts} --max-tokens 600 --shard-rows 200 --preprocessing dataset_scale --scale-rows 300 --ndjson --quiet` +
      ` | ${process.execPath} ${bin} train --data - --out ${run} --activation topk --width 64 --k 4 --batch-size 64 --steps 4 --quiet`;
    execFileSync('bash', ['-o', 'pipefail', '-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const scale = (await openShards(acts)).meta.scale;
    const j = JSON.parse(await fs.readFile(path.join(run, 'final', 'cfg.json'), 'utf8')) as SaeCfgJson;
    expect(j.dataset_scale).toBe(scale);
  });
});
