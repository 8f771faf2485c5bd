import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { kernelFactory } from '../src/kernels/index.js';
import { checkpointConfig, loadCheckpoint } from '../src/sae/checkpoint.js';
import { readSafetensors } from '../src/util/safetensors.js';
import { calibrateThresholds, selectionForCheckpoint } from '../src/sae/inference.js';
import { evaluateSae } from '../src/eval/evaluate.js';
import { openShards } from '../src/store/shard-set.js';

// The wide case (SPEC §5 "Rounding"): 256 true features in d=32, k_true=4; a Feature Choice
// SAE 16× wider than the truth, F 4,096, B 256, k 4, so M/F = 0.25 and Algorithm 1's floor gives
// most features capacity 0. Capacities in expectation must leave none dead and spend the budget.
let root: string;
let data: string;
const kernels = kernelFactory('auto');
const wide = { activation: 'feature', width: 4096, k: 4, batchSize: 256, steps: 1500, logEvery: 10, checkpointEvery: 100_000 };

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-fc-wide-'));
  data = path.join(root, 'synth');
  await writeSynth({ out: data, d: 32, fTrue: 256, kTrue: 4, rows: 32768, seed: 1 });
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

/** Mean L0 over the logged steps of the dead window (the last quarter of the run). */
async function meanL0OverDeadWindow(out: string, fromStep: number): Promise<number> {
  const rows = (await fs.readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  const l0 = rows.filter((r) => r.step > fromStep && typeof r.l0 === 'number').map((r) => r.l0 as number);
  expect(l0.length).toBeGreaterThan(10);
  return l0.reduce((a, b) => a + b, 0) / l0.length;
}

describe('Feature Choice at F 4,096 / B 256 / k 4 with capacities in expectation', () => {
  for (const capacities of ['zipf', 'uniform']) {
    it(`${capacities} capacities: no feature dead over the dead window, mean L0 within 1 % of k`, async () => {
      const out = path.join(root, capacities);
      const s = await train({ data, out, config: { ...wide, capacities }, kernels });
      expect(s.deadWindow).toBe((1500 * 256) / 4);
      expect(s.deadFraction).toBe(0);
      const l0 = await meanL0OverDeadWindow(out, 1500 - s.deadWindow / 256);
      expect(Math.abs(l0 - 4) / 4).toBeLessThan(0.01);
    });
  }

  it('exported thresholds reproduce the batch selection’s L0 one token at a time', async () => {
    const ck = await loadCheckpoint(path.join(root, 'zipf', 'final'), { withState: 'if-present' });
    expect(checkpointConfig(ck).capacityRounding).toBe('carry');
    const set = await openShards(data);
    const cal = await calibrateThresholds(ck.params, set, selectionForCheckpoint(ck), { batchSize: 256, batches: 32, kernels });
    expect(Math.abs(cal.batchL0 - 4) / 4).toBeLessThan(0.01);
    const ev = await evaluateSae(ck.params, set, () => ({ kind: 'jumprelu', threshold: cal.threshold }), { batchSize: 256, maxRows: 32 * 256, kernels });
    expect(Math.abs(ev.l0 - cal.batchL0) / cal.batchL0).toBeLessThan(0.02);
  });
});

describe('Feature Choice checkpoints carry the credits', () => {
  const short = { activation: 'feature', width: 512, k: 3, batchSize: 128, steps: 30, rankInterval: 4, logEvery: 5, checkpointEvery: 1000, deadWindow: 512 };

  it('resume with credits in flight gives the weights of an uninterrupted run, bit for bit', async () => {
    const whole = await train({ data, out: path.join(root, 'whole'), config: short, kernels });
    const cut = path.join(root, 'cut');
    await train({ data, out: cut, config: short, stopAfterSteps: 13, kernels });
    const mid = await loadCheckpoint(path.join(cut, 'checkpoint'), { withState: true });
    expect(mid.state!.snapshot.capacityCredit.some((c) => c !== 0)).toBe(true);
    const second = await train({ data, out: cut, config: {}, resume: cut, kernels });
    for (const name of ['W_enc', 'W_dec', 'b_enc', 'b_dec']) {
      const u = (await readSafetensors(path.join(whole.final!, 'sae.safetensors'))).tensors[name].data as Float32Array;
      const v = (await readSafetensors(path.join(second.final!, 'sae.safetensors'))).tensors[name].data as Float32Array;
      expect(Buffer.from(v.buffer, v.byteOffset, v.byteLength).equals(Buffer.from(u.buffer, u.byteOffset, u.byteLength))).toBe(true);
    }
  });

  it('reads a checkpoint from before the option existed as Algorithm 1’s floor', async () => {
    const ck = await loadCheckpoint(path.join(root, 'whole', 'final'), { withState: true });
    delete (ck.cfg.sae_train!.config as unknown as Record<string, unknown>).capacityRounding;
    expect(checkpointConfig(ck).capacityRounding).toBe('floor');
  });
});
