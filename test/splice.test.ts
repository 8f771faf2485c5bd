import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer, type LmTokenizer } from '../src/lm/tokenizer.js';
import { spliceEval, type SpliceSae } from '../src/eval/splice.js';
import { allocParams } from '../src/kernels/params.js';
import { ContextPacker } from '../src/harvest/contexts.js';

const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const NEOX = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt-neox');
const HOOK = 'blocks.1.hook_resid_pre';
const TEXTS = Array.from({ length: 10 }, (_, i) => `Evaluation text ${i}: the ${['grey', 'small', 'bright'][i % 3]} owl flew ${i + 2} miles over the hills before dusk.`);
const corpus = {
  async *documents(from?: number | null) {
    for (let i = from === null || from === undefined ? 0 : from + 1; i < TEXTS.length; i++) yield { text: TEXTS[i], position: i };
  },
};
let model: HookedTransformer;
let tok: LmTokenizer;

/** F = 2d with decoder rows ±e_j and a ReLU selection: reconstructs its (preprocessed) input exactly. */
function exactSae(d: number): SpliceSae {
  const p = allocParams(d, 2 * d);
  for (let j = 0; j < d; j++) {
    p.WencT[j * d + j] = 1;
    p.WencT[(d + j) * d + j] = -1;
    p.Wdec[j * d + j] = 1;
    p.Wdec[(d + j) * d + j] = -1;
  }
  return { label: 'exact', params: p, selectionFor: () => ({ kind: 'relu' }), batchSize: 256, preprocessing: 'center_unit_norm' };
}

/** Never fires and has no bias: reconstructs zeros (raw zeros with no preprocessing). */
function zeroSae(d: number): SpliceSae {
  const p = allocParams(d, 8);
  p.bEnc.fill(-1e9);
  return { label: 'zeros', params: p, selectionFor: () => ({ kind: 'relu' }), batchSize: 256, preprocessing: 'none' };
}

/** The first n contexts the evaluation packs, as ids. */
async function contexts(n: number): Promise<Int32Array> {
  const p = new ContextPacker<number>(16, tok.bosId, tok.eosId);
  const ids = new Int32Array(n * 16);
  let k = 0;
  let last: number | null = null;
  for await (const doc of corpus.documents()) {
    p.push(tok.encode(doc.text), last);
    last = doc.position;
    for (let c; k < n && (c = p.take()); k++) ids.set(c.ids, k * 16);
    if (k === n) break;
  }
  return ids;
}

beforeAll(async () => {
  model = await HookedTransformer.load(GPT2);
  tok = await loadTokenizer(GPT2);
});

describe('splice-eval (SPEC §9)', () => {
  it('recovers 100 % of the loss with an SAE that reconstructs exactly, 0 % with one that outputs zeros', async () => {
    const d = model.cfg.dModel;
    const r = await spliceEval({ model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(d), zeroSae(d)], ctx: 16, batch: 4, maxTokens: 200, includeSpecial: true });
    const [exact, zeros] = r.spliced;
    expect(exact.lossRecovered).toBeCloseTo(100, 3);
    expect(exact.kl).toBeLessThan(1e-8);
    // the zero-ablated run is computed at one position (every position's output is the same), the
    // zero SAE's run at all of them: equal up to float rounding
    expect(zeros.lossRecovered).toBeCloseTo(0, 3);
    expect(zeros.klScore).toBeCloseTo(0, 5);
    expect(r.zeroLoss).not.toBeCloseTo(r.cleanLoss, 2);
  });

  it('computes the clean, zero-ablated and spliced losses the model computes with replace (half-scale reconstruction)', async () => {
    const d = model.cfg.dModel;
    const r = await spliceEval({
      model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(d)], ctx: 16, batch: 3, maxTokens: 3 * 15, includeSpecial: true,
      reconstructOverride: (x) => {
        for (let i = 0; i < x.length; i++) x[i] *= 0.5;
      },
    });
    const ids = await contexts(3);
    const clean = model.run(ids, 3, 16, { loss: true });
    const half = model.run(ids, 3, 16, { loss: true, replace: { [HOOK]: (x) => x.forEach((v, i) => (x[i] = v * 0.5)) } });
    const zero = model.run(ids, 3, 16, { loss: true, replace: { [HOOK]: new Float32Array(3 * 16 * d) } });
    expect(r.tokens).toBe(45);
    expect(r.cleanLoss).toBeCloseTo(clean.loss!, 5);
    expect(r.spliced[0].loss).toBeCloseTo(half.loss!, 5);
    expect(r.zeroLoss).toBeCloseTo(zero.loss!, 5);
  });

  it('leaves special-token positions out of every average by default and keeps their activation', async () => {
    const d = model.cfg.dModel;
    const excl = await spliceEval({ model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(d)], ctx: 16, batch: 4, maxTokens: 10_000 });
    const incl = await spliceEval({ model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(d)], ctx: 16, batch: 4, maxTokens: 10_000, includeSpecial: true });
    expect(excl.specialTokens).toBe('excluded');
    expect(incl.specialTokens).toBe('included');
    expect(excl.tokens).toBeLessThan(incl.tokens);
    expect(excl.cleanLoss).not.toBeCloseTo(incl.cleanLoss, 4);
  });

  it('splices at resid_post of block L as at resid_pre of block L+1 (runs start at the hook)', async () => {
    const d = model.cfg.dModel;
    const a = await spliceEval({ model, tokenizer: tok, corpus, hook: 'blocks.0.hook_resid_post', saes: [zeroSae(d)], ctx: 16, batch: 2, maxTokens: 60, includeSpecial: true });
    const b = await spliceEval({ model, tokenizer: tok, corpus, hook: 'blocks.1.hook_resid_pre', saes: [zeroSae(d)], ctx: 16, batch: 2, maxTokens: 60, includeSpecial: true });
    expect(a.zeroLoss).toBeCloseTo(b.zeroLoss, 6);
    expect(a.cleanLoss).toBeCloseTo(b.cleanLoss, 6);
  });

  it('splices a hook that is not on the residual stream through a full forward with replace', async () => {
    const d = model.cfg.dModel;
    const r = await spliceEval({ model, tokenizer: tok, corpus, hook: 'blocks.0.hook_mlp_out', saes: [zeroSae(d)], ctx: 16, batch: 2, maxTokens: 30, includeSpecial: true });
    const ids = await contexts(2);
    const zero = model.run(ids, 2, 16, { loss: true, replace: { 'blocks.0.hook_mlp_out': new Float32Array(2 * 16 * d) } });
    expect(r.tokens).toBe(30);
    expect(r.zeroLoss).toBeCloseTo(zero.loss!, 5);
    expect(r.spliced[0].loss).toBeCloseTo(zero.loss!, 5);
  });

  it('mean-ablates a residual hook as the model does with every position set to the batch mean', async () => {
    const d = model.cfg.dModel;
    const r = await spliceEval({ model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(d)], ctx: 16, batch: 3, maxTokens: 3 * 15, includeSpecial: true, meanAblation: true });
    const ids = await contexts(3);
    // the evaluation runs the first 15 positions of each context (the 16th is only a target)
    const run = new Int32Array(3 * 15);
    for (let b = 0; b < 3; b++) run.set(ids.subarray(b * 16, b * 16 + 15), b * 15);
    const x = model.run(run, 3, 15, { capture: [HOOK] }).captured[HOOK];
    const mean = new Float64Array(d);
    for (let i = 0; i < 45; i++) for (let j = 0; j < d; j++) mean[j] += x[i * d + j] / 45;
    const want = model.run(ids, 3, 16, { loss: true, replace: { [HOOK]: (h) => h.forEach((_, i) => (h[i] = mean[i % d])) } });
    expect(r.meanAblation!.loss).toBeCloseTo(want.loss!, 5);
    expect(r.meanAblation!.kl).toBeGreaterThan(0);
  });

  it('computes the zero-ablated run at one position on a rotary model (GPT-NeoX) as the full replace does', async () => {
    const neox = await HookedTransformer.load(NEOX);
    const ntok = await loadTokenizer(NEOX);
    const hook = 'blocks.1.hook_resid_pre';
    const d = neox.cfg.dModel;
    const r = await spliceEval({ model: neox, tokenizer: ntok, corpus, hook, saes: [exactSae(d)], ctx: 16, batch: 2, maxTokens: 2 * 15, includeSpecial: true });
    const ids = new Int32Array(2 * 16);
    const p = new ContextPacker<number>(16, ntok.bosId, ntok.eosId);
    let k = 0;
    for await (const doc of corpus.documents()) {
      p.push(ntok.encode(doc.text), doc.position);
      for (let c; k < 2 && (c = p.take()); k++) ids.set(c.ids, k * 16);
      if (k === 2) break;
    }
    const zero = neox.run(ids, 2, 16, { loss: true, replace: { [hook]: new Float32Array(2 * 16 * d) } });
    const clean = neox.run(ids, 2, 16, { loss: true });
    expect(r.zeroLoss).toBeCloseTo(zero.loss!, 5);
    expect(r.cleanLoss).toBeCloseTo(clean.loss!, 5);
    expect(r.spliced[0].lossRecovered).toBeCloseTo(100, 3);
  });

  it('stops at --max-tokens within one context instead of filling the last batch', async () => {
    const d = model.cfg.dModel;
    for (const includeSpecial of [false, true]) {
      const r = await spliceEval({ model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(d)], ctx: 16, batch: 8, maxTokens: 20, includeSpecial });
      expect(r.tokens).toBeGreaterThanOrEqual(20);
      expect(r.tokens).toBeLessThan(20 + 15);
    }
  });

  it('refuses an SAE whose d_in is not the model’s', async () => {
    await expect(spliceEval({ model, tokenizer: tok, corpus, hook: HOOK, saes: [exactSae(32)], ctx: 16, batch: 2, maxTokens: 10 })).rejects.toThrow(/d_in 32 .* d=64/);
  });
});

describe('sae splice-eval from the command line', () => {
  const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-splice-'));
    expect(run('harvest', '--model', GPT2, '--hook', HOOK, '--out', path.join(root, 'acts'), '--max-tokens', '3000', '--quiet').status).toBe(0);
    expect(run('train', '--data', path.join(root, 'acts'), '--out', path.join(root, 'mc'), '--activation', 'mutual', '--width', '128', '--k', '4', '--batch-size', '128', '--steps', '40', '--quiet').status).toBe(0);
    expect(run('export', '--checkpoint', path.join(root, 'mc'), '--data', path.join(root, 'acts'), '--out', path.join(root, 'jr'), '--batches', '4').status).toBe(0);
  });
  afterAll(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  it('reports the batch selection and its JumpReLU export side by side, with the gap', () => {
    const r = run('splice-eval', '--checkpoint', path.join(root, 'mc'), '--exported', path.join(root, 'jr'), '--model', GPT2, '--max-tokens', '800', '--json', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ schema: 'sae-splice/1', hook: HOOK, specialTokens: 'excluded', corpus: 'brown:heldout' });
    expect(out.tokens).toBeGreaterThanOrEqual(800);
    expect(out.spliced.map((s: { label: string }) => s.label)).toEqual(['batch', 'jumprelu']);
    expect(out.gap.loss).toBeCloseTo(out.spliced[1].loss - out.spliced[0].loss, 10);
    expect(Number.isFinite(out.spliced[0].lossRecovered)).toBe(true);
  });

  it('saves its result with --out, which sae report turns into the L0 / loss-recovered figure', () => {
    const run = path.join(root, 'mc');
    const r = spawnSync(process.execPath, [bin, 'splice-eval', '--checkpoint', run, '--model', GPT2, '--max-tokens', '300', '--out', path.join(run, 'splice.json'), '--quiet'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const rep = spawnSync(process.execPath, [bin, 'report', run, '--out', path.join(root, 'report'), '--json'], { encoding: 'utf8' });
    expect(rep.status, rep.stderr).toBe(0);
    const figs = JSON.parse(rep.stdout).figures as Array<{ id: string; points: number }>;
    expect(figs.find((f) => f.id === 'l0-loss-recovered')?.points).toBe(1);
  });

  const oneLineError = (r: ReturnType<typeof run>, pattern: RegExp) => {
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(pattern);
  };

  it('refuses a --model other than the SAE’s unless --allow-other-model (same d is not enough)', () => {
    const other = path.join(path.dirname(GPT2), 'gpt-neox');
    oneLineError(run('splice-eval', '--checkpoint', path.join(root, 'mc'), '--model', other, '--max-tokens', '50', '--quiet'), /^sae: error: the SAE was trained on .*gpt2 but --model is .*gpt-neox; add --allow-other-model/);
    const ok = run('splice-eval', '--checkpoint', path.join(root, 'mc'), '--model', other, '--max-tokens', '50', '--quiet', '--allow-other-model', '--json');
    expect(ok.status, ok.stderr).toBe(0);
  });

  it('labels each SAE by what was loaded: refuses a training checkpoint as --exported, calls an export given as --checkpoint jumprelu', () => {
    oneLineError(run('splice-eval', '--checkpoint', path.join(root, 'mc'), '--exported', path.join(root, 'mc'), '--model', GPT2, '--max-tokens', '50'), /--exported .* is a training checkpoint, not a JumpReLU export .*pass it as --checkpoint/);
    const r = run('splice-eval', '--checkpoint', path.join(root, 'jr'), '--model', GPT2, '--max-tokens', '50', '--json', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).spliced.map((s: { label: string }) => s.label)).toEqual(['jumprelu']);
  });

  it('--out never replaces a file it did not write unless --force; a rerun replaces its own result', async () => {
    const f = path.join(root, 'precious.json');
    await fs.writeFile(f, 'precious\n');
    const args = ['splice-eval', '--checkpoint', path.join(root, 'mc'), '--model', GPT2, '--max-tokens', '50', '--quiet', '--out', f];
    oneLineError(run(...args), /--out .*precious\.json exists and is not an earlier output of this command; add --force/);
    expect(await fs.readFile(f, 'utf8')).toBe('precious\n');
    expect(run(...args, '--force').status).toBe(0);
    expect(JSON.parse(await fs.readFile(f, 'utf8')).schema).toBe('sae-splice/1');
    expect(run(...args).status).toBe(0);
  });

  it('prints one "<label> <loss recovered>%" line per SAE on stdout without --json, logs on stderr', () => {
    const r = run('splice-eval', '--checkpoint', path.join(root, 'mc'), '--exported', path.join(root, 'jr'), '--model', GPT2, '--max-tokens', '50', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^batch -?\d+\.\d\d%\njumprelu -?\d+\.\d\d%\n$/);
  });

  it('refuses an SAE trained on synthetic activations: it has no host model, whatever the flags', async () => {
    expect(run('synth', '--out', path.join(root, 'syn'), '--d', '16', '--features', '32', '--rows', '2048').status).toBe(0);
    expect(run('train', '--data', path.join(root, 'syn'), '--out', path.join(root, 'small'), '--width', '32', '--k', '2', '--batch-size', '128', '--steps', '3', '--quiet').status).toBe(0);
    for (const extra of [[], ['--allow-other-model']]) {
      const r = run('splice-eval', '--checkpoint', path.join(root, 'small'), '--model', GPT2, '--max-tokens', '100', ...extra);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^sae: error: \S+ was trained on synthetic activations \(sae synth\), which have no host model to splice it into; [^\n]*\n$/);
    }
  });

  it('names a --model folder that does not exist as missing, not as another model', () => {
    const r = run('splice-eval', '--checkpoint', path.join(root, 'mc'), '--model', path.join(root, 'nonexistent'), '--max-tokens', '50');
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(`sae: error: model folder ${path.join(root, 'nonexistent')} does not exist\n`);
  });
});
