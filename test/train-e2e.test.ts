import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSynth, loadDictionary, type SynthDictionary } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { finetunePhase } from '../src/sae/config.js';
import { featureRecovery } from '../src/eval/recovery.js';
import { loadCheckpoint } from '../src/sae/checkpoint.js';
import { selectionForCheckpoint } from '../src/sae/inference.js';
import { readSafetensors } from '../src/util/safetensors.js';
import { UserError } from '../src/util/errors.js';

// The easy configuration of the recovery claim: d=32, 64 true features (2× superposition), k_true=3
// with log-normal difficulty σ=0.5; SAE width 128, k=3, B=256, 1500 steps at lr 3e-3.
let root: string;
let data: string;
let dict: SynthDictionary;
const easy = { width: 128, k: 3, batchSize: 256, steps: 1500, lr: 3e-3, logEvery: 100, checkpointEvery: 100_000 };

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-e2e-'));
  data = path.join(root, 'synth');
  await writeSynth({ out: data, d: 32, fTrue: 64, kTrue: 3, rows: 32768, seed: 1 });
  dict = await loadDictionary(data);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function recovery(dir: string) {
  const ck = await loadCheckpoint(dir, { withState: false });
  return featureRecovery(dict.G, dict.fTrue, ck.params.Wdec, ck.cfg.d_sae, ck.cfg.d_in, 0.9);
}

async function same(a: string, b: string) {
  const x = (await readSafetensors(path.join(a, 'sae.safetensors'))).tensors;
  const y = (await readSafetensors(path.join(b, 'sae.safetensors'))).tensors;
  for (const name of ['W_enc', 'W_dec', 'b_enc', 'b_dec']) {
    const u = x[name].data as Float32Array;
    const v = y[name].data as Float32Array;
    if (!Buffer.from(u.buffer, u.byteOffset, u.byteLength).equals(Buffer.from(v.buffer, v.byteOffset, v.byteLength))) return false;
  }
  return true;
}

describe('sae synth → sae train recovers the ground truth', () => {
  for (const activation of ['topk', 'mutual', 'feature']) {
    it(`${activation} recovers ≥ 90 % of the true features at cosine 0.9 (mean max cosine ≥ 0.95)`, async () => {
      const s = await train({ data, out: path.join(root, `rec-${activation}`), config: { ...easy, activation } });
      const rec = await recovery(s.final!);
      // measured: topk 0.984 / 100 %, mutual 0.998 / 100 %, feature 0.967 / 96.9 %
      expect(rec.meanMaxCos).toBeGreaterThanOrEqual(0.95);
      expect(rec.fractionRecovered).toBeGreaterThanOrEqual(0.9);
      if (activation === 'feature') expect(s.deadFraction).toBe(0);
    });
  }

  it('the phased MC → FC run recovers ≥ 90 % of the true features (mean max cosine ≥ 0.95)', async () => {
    const s = await train({ data, out: path.join(root, 'rec-phased'), config: { ...easy, activation: 'mutual', steps: 1100, phases: [finetunePhase(400)] } });
    expect(s.activations).toEqual(['mutual', 'feature']);
    const rec = await recovery(s.final!);
    // measured: 0.995 / 100 %
    expect(rec.meanMaxCos).toBeGreaterThanOrEqual(0.95);
    expect(rec.fractionRecovered).toBeGreaterThanOrEqual(0.9);
  });
});

describe('checkpoints', () => {
  const short = { activation: 'mutual', width: 64, k: 3, batchSize: 128, steps: 40, rankInterval: 5, nfmCoef: 0.01, nfmSample: 16, logEvery: 5, checkpointEvery: 1000, deadWindow: 512 };

  it('resume after an interruption gives the weights of an uninterrupted run, bit for bit', async () => {
    const whole = await train({ data, out: path.join(root, 'whole'), config: short });
    const cut = path.join(root, 'cut');
    const first = await train({ data, out: cut, config: short, stopAfterSteps: 17 });
    expect(first.interrupted).toBe(true);
    expect(first.final).toBeNull();
    const second = await train({ data, out: cut, config: {}, resume: cut });
    expect(second.steps).toBe(40);
    expect(await same(whole.final!, second.final!)).toBe(true);
    // the metrics log reads like one run: each logged step once
    const lines = (await fs.readFile(path.join(cut, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.step)).toEqual([5, 10, 15, 20, 25, 30, 35, 40]);
    // every dead fraction states its window
    expect(lines.every((l) => l.deadWindow === 512 && typeof l.deadFraction === 'number')).toBe(true);
    expect(second.deadWindow).toBe(512);
  });

  it('writes SAELens-layout weights, a cfg and the full training state', async () => {
    const s = await train({ data, out: path.join(root, 'layout'), config: { ...short, steps: 3 } });
    const files = (await fs.readdir(s.final!)).sort();
    expect(files).toEqual(['cfg.json', 'sae.safetensors', 'state.json', 'state.safetensors']);
    const w = (await readSafetensors(path.join(s.final!, 'sae.safetensors'))).tensors;
    expect(w.W_enc.shape).toEqual([32, 64]);
    expect(w.W_dec.shape).toEqual([64, 32]);
    const cfg = JSON.parse(await fs.readFile(path.join(s.final!, 'cfg.json'), 'utf8'));
    expect(cfg).toMatchObject({ architecture: 'mutual', d_in: 32, d_sae: 64, hook_name: 'synthetic' });
    const state = JSON.parse(await fs.readFile(path.join(s.final!, 'state.json'), 'utf8'));
    expect(state.step).toBe(3);
    expect(state.dataPosition).toBeTruthy();
    // nothing half-written is left beside the checkpoint
    expect((await fs.readdir(path.join(root, 'layout'))).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('runs the paper’s phases in one command: Mutual Choice, then Feature Choice without aux losses', async () => {
    const logs: Array<{ activation: string; auxZipf: number; auxK: number }> = [];
    await train({ data, out: path.join(root, 'phased'), config: { ...short, steps: 10, phases: [finetunePhase(10)], logEvery: 1 }, onLog: (r) => logs.push(r) });
    expect(logs.slice(0, 10).every((r) => r.activation === 'mutual')).toBe(true);
    expect(logs.slice(10).every((r) => r.activation === 'feature' && r.auxK === 0 && r.auxZipf === 0)).toBe(true);
  });

  it('appends a phase on resume when asked to (--append-phase)', async () => {
    const out = path.join(root, 'two-commands');
    await train({ data, out, config: { ...short, steps: 10 } });
    const logs: string[] = [];
    const s = await train({ data, out, config: {}, appendPhases: [finetunePhase(6)], resume: out, onLog: (r) => logs.push(r.activation) });
    expect(s.steps).toBe(16);
    expect(s.activations).toEqual(['mutual', 'feature']);
    expect(logs).toEqual(['feature', 'feature']); // steps 15 (logEvery 5) and 16 (the last)
    const cfg = JSON.parse(await fs.readFile(path.join(s.final!, 'cfg.json'), 'utf8'));
    expect(cfg.architecture).toBe('feature');
  });

  it('resumes a phased run interrupted in phase 1 with its own command, bit for bit', async () => {
    const config = { ...short, steps: 10, phases: [finetunePhase(6)] };
    const whole = await train({ data, out: path.join(root, 'phased-whole'), config });
    const cut = path.join(root, 'phased-cut');
    await train({ data, out: cut, config, stopAfterSteps: 4 });
    const logs: string[] = [];
    const s = await train({ data, out: cut, config, resume: cut, onLog: (r) => logs.push(r.activation) });
    expect(s.steps).toBe(16);
    expect(s.activations).toEqual(['mutual', 'feature']);
    expect(await same(whole.final!, s.final!)).toBe(true);
  });

  it('resuming with phase 1 alone repeated continues the recorded plan, not a new one', async () => {
    const out = path.join(root, 'phased-partial');
    await train({ data, out, config: { ...short, steps: 10, phases: [finetunePhase(6)] }, stopAfterSteps: 4 });
    const s = await train({ data, out, config: { activation: 'mutual', steps: 10 }, resume: out });
    expect(s.activations).toEqual(['mutual', 'feature']);
    expect(s.steps).toBe(16);
  });

  it('--init-from starts a new run from a checkpoint’s weights with a fresh step count', async () => {
    const base = await train({ data, out: path.join(root, 'base'), config: { ...short, steps: 12 } });
    const s = await train({ data, out: path.join(root, 'ft'), config: { ...short, activation: 'feature', steps: 1, lr: 1e-12, bDecInit: 'zero' }, initFrom: base.final! });
    expect(s.steps).toBe(1);
    const a = await loadCheckpoint(base.final!, { withState: false });
    const b = await loadCheckpoint(s.final!, { withState: false });
    let worst = 0;
    for (let i = 0; i < a.params.Wdec.length; i++) worst = Math.max(worst, Math.abs(a.params.Wdec[i] - b.params.Wdec[i]));
    expect(worst).toBeLessThan(1e-5);
  });

  it('refuses to start a new run over an existing one unless forced', async () => {
    const out = path.join(root, 'twice');
    await train({ data, out, config: { ...short, steps: 2 } });
    await expect(train({ data, out, config: { ...short, steps: 2 } })).rejects.toThrow(/already holds a run.*--resume.*--force/);
    const again = await train({ data, out, config: { ...short, steps: 3 }, force: true });
    expect(again.steps).toBe(3);
    const steps = (await fs.readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l).step);
    expect(steps).toEqual([3]);
  });

  it('refuses a checkpoint whose state.json lost its RNG state', async () => {
    const s = await train({ data, out: path.join(root, 'rngless'), config: { ...short, steps: 2 } });
    const f = path.join(s.final!, 'state.json');
    const st = JSON.parse(await fs.readFile(f, 'utf8'));
    st.rng = 'oops';
    await fs.writeFile(f, JSON.stringify(st));
    await expect(train({ data, out: path.join(root, 'rngless'), config: {}, resume: s.final! })).rejects.toThrow(/RNG state/);
  });

  it('evaluates an interrupted MC→FC run with the activation its weights were trained with', async () => {
    const out = path.join(root, 'mid-phase');
    const s = await train({ data, out, config: { ...short, steps: 10, phases: [{ activation: 'feature', steps: 10 }] }, stopAfterSteps: 4 });
    expect(s.interrupted).toBe(true);
    const ck = await loadCheckpoint(path.join(out, 'checkpoint'), { withState: true });
    expect(ck.cfg.architecture).toBe('mutual');
    expect(selectionForCheckpoint(ck)(128).kind).toBe('mutual');
  });

  it('refuses a missing checkpoint with a one-line user error', async () => {
    await expect(train({ data, out: path.join(root, 'x'), config: {}, resume: path.join(root, 'nope') })).rejects.toThrow(UserError);
  });

  it('refuses a truncated checkpoint', async () => {
    const s = await train({ data, out: path.join(root, 'trunc'), config: { ...short, steps: 2 } });
    const f = path.join(s.final!, 'state.safetensors');
    const buf = await fs.readFile(f);
    await fs.writeFile(f, buf.subarray(0, buf.length - 100));
    await expect(train({ data, out: path.join(root, 'trunc'), config: {}, resume: s.final! })).rejects.toThrow(/truncated/);
  });

  it('refuses a checkpoint whose d does not match the shards', async () => {
    const other = path.join(root, 'synth16');
    await writeSynth({ out: other, d: 16, fTrue: 32, kTrue: 2, rows: 1024, seed: 2 });
    const s = await train({ data: other, out: path.join(root, 'd16'), config: { ...short, width: 32, steps: 2, batchSize: 64 } });
    await expect(train({ data, out: path.join(root, 'd16'), config: {}, resume: s.final! })).rejects.toThrow(/d=/);
  });
});
