import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asyncBufferFromFile, parquetMetadataAsync } from 'hyparquet';
import { harvest, type HarvestConfig } from '../src/pipeline/harvest.js';
import { train, type LiveData } from '../src/pipeline/train/train.js';
import { spliceEval } from '../src/eval/splice.js';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer, type LmTokenizer } from '../src/lm/tokenizer.js';
import { openShards } from '../src/store/shard-set.js';
import { readRows } from '../src/store/row-reader.js';
import { openSae } from '../src/sae/sae.js';
import { allocParams } from '../src/kernels/params.js';
import { kernelFactory, lmKernelFactory } from '../src/kernels/index.js';

// --precision (issue 18 part 1) as a user meets it: the compiled CLI (npm test builds dist/) on the
// tiny fixture model, every run on the reference kernels, whose bf16 is the rule itself
// (docs/precision.md), so that the numbers do not depend on the machine.
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const HOOK = 'blocks.1.hook_resid_pre';
const REF = ['--kernels', 'reference'];
let root: string;

function sae(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(...args: string[]): string {
  const r = sae(...args);
  if (r.code !== 0) throw new Error(`sae ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

function expectUserError(r: ReturnType<typeof sae>, pattern: RegExp) {
  expect(r.code).toBe(2);
  const lines = r.stderr.trim().split('\n');
  expect(lines.filter((l) => l.startsWith('sae: error:'))).toHaveLength(1);
  expect(lines[lines.length - 1]).toMatch(/^sae: error: /);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

const at = (...p: string[]) => path.join(root, ...p);
const harvestArgs = (out: string, precision: string, ...more: string[]) => ['harvest', '--model', GPT2, '--hook', HOOK, '--out', out, '--ctx', '16', '--max-tokens', '1200', '--shard-rows', '400', '--batch', '8', '--precision', precision, '--quiet', ...REF, ...more];
const trainArgs = (data: string, out: string, steps: number, ...more: string[]) => ['train', '--data', data, '--out', out, '--k', '4', '--width', '128', '--batch-size', '100', '--steps', String(steps), '--checkpoint-every', '10', '--quiet', ...REF, ...more];
const spliceArgs = (ck: string, precision: string) => ['splice-eval', '--checkpoint', ck, '--model', GPT2, '--max-tokens', '300', '--ctx', '16', '--json', '--quiet', '--precision', precision, ...REF];

async function cfgOf(ck: string): Promise<Record<string, any>> {
  return JSON.parse(await fs.readFile(path.join(ck, 'cfg.json'), 'utf8'));
}

/** The shard's own Parquet key-value metadata, read with hyparquet rather than through src/store. */
async function kvOf(file: string): Promise<Record<string, string | undefined>> {
  const md = await parquetMetadataAsync(await asyncBufferFromFile(file));
  return Object.fromEntries((md.key_value_metadata ?? []).map((e) => [e.key, e.value]));
}

async function allRows(dir: string): Promise<Float32Array> {
  const set = await openShards(dir);
  const out = new Float32Array(set.rows * set.meta.d);
  let n = 0;
  for (const [i, f] of set.files.entries()) {
    out.set((await readRows(set, i, 0, f.rows)).acts, n);
    n += f.rows * set.meta.d;
  }
  return out;
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-precision-'));
  // the same text harvested at both precisions, and an SAE trained at each on its own shards
  ok(...harvestArgs(at('acts32'), 'fp32'));
  ok(...harvestArgs(at('acts16'), 'bf16'));
  ok(...trainArgs(at('acts32'), at('run32'), 20));
  ok(...trainArgs(at('acts16'), at('run16'), 20, '--precision', 'bf16'));
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae harvest --precision', () => {
  it('records bf16 in every shard and in the manifest', async () => {
    const set = await openShards(at('acts16'));
    expect(set.files.length).toBe(3);
    for (const f of set.files) expect((await kvOf(f.path))['sae.precision']).toBe('bf16');
    const manifest = JSON.parse(await fs.readFile(at('acts16', 'manifest.json'), 'utf8'));
    expect(manifest.meta.precision).toBe('bf16');
    expect(set.meta.precision).toBe('bf16');
  });

  it('records fp32 when no precision is asked for', async () => {
    const out = at('acts-default');
    ok('harvest', '--model', GPT2, '--hook', HOOK, '--out', out, '--ctx', '16', '--max-tokens', '100', '--quiet', ...REF);
    expect((await kvOf(path.join(out, 'shard-00000.parquet')))['sae.precision']).toBe('fp32');
  });

  it('computes rows that differ from the fp32 ones, but only by bf16 rounding', async () => {
    const a = await allRows(at('acts32'));
    const b = await allRows(at('acts16'));
    expect(b.length).toBe(a.length);
    let se = 0;
    let ss = 0;
    let changed = 0;
    for (let i = 0; i < a.length; i++) {
      se += (a[i] - b[i]) ** 2;
      ss += a[i] ** 2;
      if (a[i] !== b[i]) changed++;
    }
    // the flag is not ignored: most values move …
    expect(changed / a.length).toBeGreaterThan(0.5);
    // … by about bf16's unit roundoff (2^-9 ≈ 0.002) accumulated over two layers, not more
    const rel = Math.sqrt(se / ss);
    expect(rel).toBeGreaterThan(1e-4);
    expect(rel).toBeLessThan(0.03);
  });

  it('refuses to resume a harvest at another precision, naming both', async () => {
    const out = at('acts-killed');
    // a harvest killed after its first shard, as kill -9 leaves it
    const killed = spawnSync(process.execPath, [bin, ...harvestArgs(out, 'fp32')], { encoding: 'utf8', env: { ...process.env, SAE_TEST_KILL_AFTER_SHARDS: '1' } });
    expect(killed.status).not.toBe(0);
    expectUserError(sae(...harvestArgs(out, 'bf16')), /holds another harvest \(precision "fp32" there, "bf16" here\)/);
    // the same precision continues it
    ok(...harvestArgs(out, 'fp32'));
    expect((await openShards(out)).rows).toBe(1200);
  });
});

describe('sae train --precision', () => {
  it('records the precision in every checkpoint, with the shards’ own', async () => {
    for (const ck of ['checkpoint', 'final']) {
      const cfg = await cfgOf(at('run16', ck));
      expect(cfg.precision).toBe('bf16');
      expect(cfg.sae_train.config.precision).toBe('bf16');
      expect(cfg.sae_train.shardsPrecision).toBe('bf16');
      expect(cfg.dtype).toBe('float32');
    }
    expect((await cfgOf(at('run32', 'final'))).precision).toBe('fp32');
  });

  it('trains at fp32 on shards harvested at bf16 (activations are data)', async () => {
    ok(...trainArgs(at('acts16'), at('run-cross'), 5));
    const cfg = await cfgOf(at('run-cross', 'final'));
    expect(cfg.precision).toBe('fp32');
    expect(cfg.sae_train.shardsPrecision).toBe('bf16');
  });

  it('refuses to resume a run at another precision, naming both', () => {
    expectUserError(sae(...trainArgs(at('acts16'), at('run16'), 30, '--resume', at('run16'), '--precision', 'fp32')), /cannot change precision when resuming \(checkpoint has "bf16", this command "fp32"\)/);
  });

  it('resumes a run at the precision it recorded when none is asked for', async () => {
    const out = at('run-resumed');
    ok(...trainArgs(at('acts16'), out, 10, '--precision', 'bf16'));
    ok(...trainArgs(at('acts16'), out, 15, '--resume', out));
    const cfg = await cfgOf(path.join(out, 'final'));
    expect(cfg.sae_train.step).toBe(15);
    expect(cfg.precision).toBe('bf16');
  });

  it('takes the precision from a --config file', async () => {
    const file = at('bf16.json');
    await fs.writeFile(file, JSON.stringify({ precision: 'bf16' }));
    ok(...trainArgs(at('acts32'), at('run-config'), 5, '--config', file));
    expect((await cfgOf(at('run-config', 'final'))).precision).toBe('bf16');
  });

  it('applies the one precision to the LM and the SAE when training from the model', async () => {
    const out = at('live16');
    ok('train', '--model', GPT2, '--hook', HOOK, '--ctx', '16', '--lm-batch', '8', '--shuffle-window', '200', '--out', out, '--k', '4', '--width', '128', '--batch-size', '100', '--steps', '5', '--precision', 'bf16', '--quiet', ...REF);
    const cfg = await cfgOf(path.join(out, 'final'));
    expect(cfg.precision).toBe('bf16');
    // the rows came from the LM at the run's precision
    expect(cfg.sae_train.shardsPrecision).toBe('bf16');
  });
});

describe('splice-eval and eval --precision', () => {
  it('runs harvest → train → splice-eval at bf16 end to end and records it', () => {
    const out = JSON.parse(ok(...spliceArgs(at('run16'), 'bf16')));
    expect(out).toMatchObject({ schema: 'sae-splice/1', precision: 'bf16', trainedPrecision: 'bf16' });
    expect(Number.isFinite(out.spliced[0].lossRecovered)).toBe(true);
  });

  it('writes the precision into the --out file too', async () => {
    const file = at('splice.json');
    ok(...spliceArgs(at('run16'), 'bf16'), '--out', file);
    expect(JSON.parse(await fs.readFile(file, 'utf8'))).toMatchObject({ precision: 'bf16', trainedPrecision: 'bf16' });
  });

  it('evaluates a checkpoint trained in bf16 at fp32', () => {
    const splice = JSON.parse(ok(...spliceArgs(at('run16'), 'fp32')));
    expect(splice).toMatchObject({ precision: 'fp32', trainedPrecision: 'bf16' });
    const ev = JSON.parse(ok('eval', '--checkpoint', at('run16'), '--data', at('acts16'), '--precision', 'fp32', ...REF));
    expect(ev).toMatchObject({ schema: 'sae-eval/1', precision: 'fp32', trainedPrecision: 'bf16' });
  });

  it('evaluates a checkpoint trained in fp32 at bf16', () => {
    const splice = JSON.parse(ok(...spliceArgs(at('run32'), 'bf16')));
    expect(splice).toMatchObject({ precision: 'bf16', trainedPrecision: 'fp32' });
    const ev = JSON.parse(ok('eval', '--checkpoint', at('run32'), '--data', at('acts32'), '--precision', 'bf16', ...REF));
    expect(ev).toMatchObject({ precision: 'bf16', trainedPrecision: 'fp32' });
  });

  it('gives bf16 results that differ from fp32 but are close', () => {
    const a = JSON.parse(ok(...spliceArgs(at('run32'), 'fp32')));
    const b = JSON.parse(ok(...spliceArgs(at('run32'), 'bf16')));
    expect(b.cleanLoss).not.toBe(a.cleanLoss);
    expect(Math.abs(b.cleanLoss - a.cleanLoss)).toBeLessThan(0.01);
    expect(b.spliced[0].loss).not.toBe(a.spliced[0].loss);
    expect(Math.abs(b.spliced[0].loss - a.spliced[0].loss)).toBeLessThan(0.02);
    const e32 = JSON.parse(ok('eval', '--checkpoint', at('run32'), '--data', at('acts32'), ...REF));
    const e16 = JSON.parse(ok('eval', '--checkpoint', at('run32'), '--data', at('acts32'), '--precision', 'bf16', ...REF));
    expect(e32.precision).toBe('fp32');
    expect(e16.fvu).not.toBe(e32.fvu);
    expect(Math.abs(e16.fvu - e32.fvu)).toBeLessThan(0.02 * e32.fvu);
  });

  it('runs at bf16 on the default kernels (native where built) as on the reference', async () => {
    const out = at('run-auto');
    ok(...trainArgs(at('acts16'), out, 5, '--precision', 'bf16').filter((x) => !REF.includes(x)));
    expect((await cfgOf(path.join(out, 'final'))).precision).toBe('bf16');
    const args = spliceArgs(at('run16'), 'bf16');
    const auto = JSON.parse(ok(...args.slice(0, args.length - REF.length)));
    const ref = JSON.parse(ok(...args));
    expect(auto.precision).toBe('bf16');
    // the same rule, summed in another order (docs/precision.md)
    expect(Math.abs(auto.cleanLoss - ref.cleanLoss)).toBeLessThan(1e-3);
    expect(Math.abs(auto.spliced[0].loss - ref.spliced[0].loss)).toBeLessThan(1e-3);
  });

  it('reads a checkpoint that records no precision as fp32', async () => {
    const ck = at('old-ck');
    await fs.cp(at('run16', 'final'), ck, { recursive: true });
    const cfg = await cfgOf(ck);
    delete cfg.precision;
    delete cfg.sae_train.config.precision;
    delete cfg.sae_train.shardsPrecision;
    await fs.writeFile(path.join(ck, 'cfg.json'), JSON.stringify(cfg));
    expect((await openSae(ck)).trainedPrecision).toBe('fp32');
    expect(JSON.parse(ok(...spliceArgs(ck, 'bf16')))).toMatchObject({ precision: 'bf16', trainedPrecision: 'fp32' });
  });
});

describe('the flag itself', () => {
  it('refuses an unknown precision with one line and exit 2, on every command that has it', () => {
    const cases = [
      harvestArgs(at('never'), 'fp16'),
      trainArgs(at('acts32'), at('never'), 5, '--precision', 'fp16'),
      spliceArgs(at('run32'), 'fp16'),
      ['eval', '--checkpoint', at('run32'), '--data', at('acts32'), '--precision', 'fp16'],
      ['model', 'run', GPT2, '--ids', '1,2,3', '--precision', 'fp16'],
      ['export', '--checkpoint', at('run32'), '--data', at('acts32'), '--out', at('never'), '--precision', 'fp16'],
      ['report', at('run32'), '--out', at('never'), '--precision', 'fp16'],
      ['demo', '--out', at('never'), '--precision', 'fp16'],
    ];
    for (const args of cases) expectUserError(sae(...args), /--precision=fp16 to be one of: fp32, bf16/);
  });

  it('refuses an unknown precision in a --config file with one line', async () => {
    const file = at('fp16.json');
    await fs.writeFile(file, JSON.stringify({ precision: 'fp16' }));
    expectUserError(sae(...trainArgs(at('acts32'), at('never'), 5, '--config', file)), /unknown precision "fp16"/);
  });

  it('is listed by --help of every command that runs an encoder or an LM', () => {
    for (const cmd of [['harvest'], ['train'], ['splice-eval'], ['eval'], ['model', 'run'], ['export'], ['report'], ['demo']]) {
      const r = sae(...cmd, '--help');
      expect(r.code, cmd.join(' ')).toBe(0);
      // oclif wraps the description at the terminal's width
      expect(r.stdout.replace(/\s+/g, ' '), cmd.join(' ')).toMatch(/--precision=<option> .*bf16 = operands of the big GEMMs .*docs\/precision\.md.* <options: fp32\|bf16>/);
    }
  });

  it('makes model run compute at bf16 and say so', () => {
    const a = JSON.parse(ok('model', 'run', GPT2, '--ids', '5,17,42,7,99', '--json', ...REF));
    const b = JSON.parse(ok('model', 'run', GPT2, '--ids', '5,17,42,7,99', '--json', '--precision', 'bf16', ...REF));
    expect([a.precision, b.precision]).toEqual(['fp32', 'bf16']);
    expect(b.loss).not.toBe(a.loss);
    expect(Math.abs(b.loss - a.loss)).toBeLessThan(0.05);
  });
});

describe('the library', () => {
  let model16: HookedTransformer;
  let tok: LmTokenizer;
  const TEXTS = Array.from({ length: 12 }, (_, i) => `Line ${i}: a ${['red', 'blue', 'green'][i % 3]} bird sang ${i * 3} songs by the lake at dawn.`);
  const corpus = {
    describe: () => 'memory:12',
    async *documents(from?: number | null) {
      for (let i = from === null || from === undefined ? 0 : from + 1; i < TEXTS.length; i++) yield { text: TEXTS[i], position: i };
    },
  };
  const hcfg = (over: Partial<HarvestConfig> = {}): HarvestConfig => ({
    model: 'm', revision: 'r', hooks: [HOOK], ctx: 16, mode: 'concat', skipBos: false, maxTokens: null, shardRows: 50, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: 'memory:12', tokenizer: tok.digest, batch: 2, ...over,
  });

  beforeAll(async () => {
    model16 = await HookedTransformer.load(GPT2, lmKernelFactory('reference', 'bf16'));
    tok = await loadTokenizer(GPT2);
  });

  it('harvests at the precision of the model’s kernels, and refuses a config that names another', async () => {
    const out = at('lib-acts');
    await harvest({ out, model: model16, tokenizer: tok, corpus, config: hcfg() });
    expect((await openShards(out)).meta.precision).toBe('bf16');
    await expect(harvest({ out: at('lib-never'), model: model16, tokenizer: tok, corpus, config: hcfg({ precision: 'fp32' }) })).rejects.toThrow(/asks for precision fp32 but the model's kernels \(reference-bf16\) compute at bf16/);
  });

  it('resumes a harvest whose journal predates precision as an fp32 one', async () => {
    const out = at('lib-old-journal');
    const model32 = await HookedTransformer.load(GPT2, lmKernelFactory('reference'));
    const first = await harvest({ out, model: model32, tokenizer: tok, corpus, config: hcfg(), stopAfterBatches: 2 });
    expect(first.complete).toBe(false);
    const journal = JSON.parse(await fs.readFile(path.join(out, 'harvest.json'), 'utf8'));
    delete journal.config.precision;
    await fs.writeFile(path.join(out, 'harvest.json'), JSON.stringify(journal));
    await expect(harvest({ out, model: model16, tokenizer: tok, corpus, config: hcfg() })).rejects.toThrow(/precision "fp32" there, "bf16" here/);
    expect((await harvest({ out, model: model32, tokenizer: tok, corpus, config: hcfg() })).complete).toBe(true);
  });

  it('trains with the reference kernels at the config’s precision when given none', async () => {
    await train({ data: at('acts32'), out: at('lib-run'), config: { k: 4, width: 128, batchSize: 100, steps: 3, precision: 'bf16' } });
    expect((await cfgOf(at('lib-run', 'final'))).precision).toBe('bf16');
  });

  it('refuses kernels of another precision than the run’s', async () => {
    await expect(train({ data: at('acts32'), out: at('lib-mismatch'), kernels: kernelFactory('reference'), config: { k: 4, width: 128, batchSize: 100, steps: 3, precision: 'bf16' } })).rejects.toThrow(
      /trains at precision bf16 but its kernels \(reference\) compute at fp32/,
    );
  });

  it('refuses to train from a model computing at another precision than the run’s', async () => {
    const live: LiveData = {
      model: model16,
      tokenizer: tok,
      corpus: corpus as unknown as LiveData['corpus'],
      rows: { hooks: [HOOK], ctx: 16, mode: 'concat', skipBos: false, batch: 3 },
      preprocessing: 'center_unit_norm',
      modelName: 'tiny-gpt2',
      description: 'live:tiny memory:12',
    };
    await expect(train({ data: '', live, out: at('lib-live'), config: { k: 4, width: 128, batchSize: 64, steps: 2, shuffleWindow: 128 } })).rejects.toThrow(
      /trains at precision fp32 but the model it harvests from computes at bf16/,
    );
  });

  it('splices at the model’s precision, and refuses SAE kernels at another', async () => {
    const p = allocParams(64, 8);
    const saes = [{ label: 'zero', params: p, selectionFor: () => ({ kind: 'relu' as const }), batchSize: 64, preprocessing: 'none' as const }];
    const opts = { model: model16, tokenizer: tok, corpus, hook: HOOK, saes, ctx: 16, batch: 2, maxTokens: 40 };
    expect((await spliceEval(opts)).precision).toBe('bf16');
    await expect(spliceEval({ ...opts, kernels: kernelFactory('reference') })).rejects.toThrow(/SAE's kernels \(reference\) compute at fp32 but the model's \(reference-bf16\) at bf16/);
  });
});
