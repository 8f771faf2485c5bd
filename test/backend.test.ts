import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { KernelFactory, SaeParams, Selection } from '../src/kernels/types.js';
import type { BackendInit, StepRequest } from '../src/sae/backend.js';
import { cpuBackend, CpuTrainingBackend } from '../src/sae/backend-cpu.js';
import { createReferenceKernels } from '../src/kernels/reference.js';
import { nativeAvailable, nativeInfo, nativeKernelsFor } from '../src/kernels/native.js';
import { kernelFactory, lmKernelFactory } from '../src/kernels/index.js';
import { backendFactory } from '../src/sae/backend.js';
import { allocParams, tensors } from '../src/kernels/params.js';
import { initParams } from '../src/sae/params.js';
import { allocWorkspace, batchVariance, lossAndGrad, type AuxLossSpec } from '../src/sae/objective.js';
import { FeatureStats } from '../src/sae/density.js';
import { uniformCapacities } from '../src/sae/zipf.js';
import { Trainer } from '../src/sae/trainer.js';
import { resolveConfig } from '../src/sae/config.js';
import { UserError } from '../src/util/errors.js';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { batches, DIMS, recordTrace, trainer } from './helpers/trainer-trace.js';
import { isolating, logging, type Crossing } from './helpers/backends.js';

// The training-backend contract (src/sae/backend.ts) on the CPU: the CPU backend is the old
// step composed from the kernels, bit for bit, on every kernel implementation of this machine; the
// Trainer needs nothing from a backend beyond the contract (a backend that copies at every
// crossing, as a device must, gives the same numbers); and per step only the batch and O(F)
// vectors cross. test/trainer-golden.test.ts checks the numbers against main's recorded ones.

const { d, F, B } = DIMS;
const kernelSets: Array<[string, KernelFactory]> = [['reference', createReferenceKernels]];
if (nativeAvailable()) for (const isa of nativeInfo()!.isas) kernelSets.push([`native ${isa}`, nativeKernelsFor(isa)]);

const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const copy = (p: SaeParams): SaeParams => ({ d: p.d, F: p.F, WencT: p.WencT.slice(), bEnc: p.bEnc.slice(), Wdec: p.Wdec.slice(), bDec: p.bDec.slice() });
const init = (over: Partial<BackendInit> = {}): BackendInit => ({ d, F, maxB: B, maxNnz: 4 * B, auxK: 8, deadWindow: B, densityEma: 0.99, ...over });
const optimizer = (step: number) => ({ lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-5, step, maxGradNorm: 1 });

function startParams(x: Float32Array): SaeParams {
  const p = allocParams(d, F);
  initParams(p, 3, { sample: x, n: B });
  return p;
}

const selections: Selection[] = [{ kind: 'topk', k: 4 }, { kind: 'mutual', M: 4 * B }, { kind: 'feature', capacity: uniformCapacities(4, B, F) }, { kind: 'relu' }];
const dyingSet = Uint8Array.from({ length: F }, (_, j) => (j % 6 === 0 ? 1 : 0));

function request(x: Float32Array, s: number): StepRequest {
  const selection = selections[s % selections.length];
  return {
    x,
    B,
    selection,
    l1Coef: selection.kind === 'relu' ? 0.5 : 0,
    auxK: { k: 8, coef: 1 / 32 },
    auxZipf: s >= 3 ? { k: 8, coef: 1 / 16 } : null,
    nfmSample: Int32Array.from([1, 5, 9, 20, 33]),
    nfmCoef: 0.01,
    nfmInfCoef: 0.02,
    optimizer: optimizer(s + 1),
  };
}

describe('CpuTrainingBackend', () => {
  for (const [name, kernels] of kernelSets) {
    it(`is lossAndGrad, optimizerStep and FeatureStats.update composed, bit for bit (${name})`, () => {
      const xs = batches(9, 8);
      const p0 = startParams(xs[0]);
      const backend = new CpuTrainingBackend(kernels, init({ params: copy(p0) }));
      // the oracle: the step as the Trainer wrote it before the backend existed
      const k = kernels({ d, F, maxB: B });
      const p = copy(p0);
      const g = allocParams(d, F);
      const m = tensors(p).map((t) => new Float32Array(t.length));
      const v = tensors(p).map((t) => new Float32Array(t.length));
      const stats = new FeatureStats(F, { emaDecay: 0.99 });
      const ws = allocWorkspace(d, B, 4 * B, 2, 8 * B, Float32Array);
      const dead = new Uint8Array(F);
      let sawAuxK = false;
      let sawAuxZipf = false;
      xs.forEach((x, s) => {
        if (s === 3) backend.setDying(dyingSet);
        const req = request(x, s);
        const r = backend.step(req);
        const aux: AuxLossSpec[] = [];
        if (stats.deadMask(B, dead) > 0) aux.push({ name: 'auxK', mask: dead, k: 8, coef: 1 / 32 });
        if (req.auxZipf) aux.push({ name: 'auxZipf', mask: dyingSet, k: 8, coef: 1 / 16 });
        const terms = lossAndGrad(k, p, g, x, B, { selection: req.selection, l1Coef: req.l1Coef, aux, nfmSample: req.nfmSample, nfmCoef: 0.01, nfmInfCoef: 0.02 }, ws);
        const gradNorm = k.optimizerStep(p, g, m, v, req.optimizer);
        stats.update(ws.enc.codes, B);
        expect(r.applied).toBe(true);
        expect(r.terms, `step ${s}`).toEqual(terms);
        expect(r.gradNorm).toBe(gradNorm);
        expect(r.batchVariance).toBe(batchVariance(x, B, d));
        expect(r.deadCount).toBe(stats.deadMask(B, dead));
        sawAuxK ||= r.terms.auxK > 0;
        sawAuxZipf ||= r.terms.auxZipf > 0;
      });
      // the runs reached both aux losses, so their gating was compared too
      expect(sawAuxK && sawAuxZipf).toBe(true);
      const got = backend.readParams();
      tensors(p).forEach((t, i) => expect(bytes(tensors(got)[i]).equals(bytes(t)), `param ${i}`).toBe(true));
      const o = backend.readOptimizer();
      m.forEach((t, i) => expect(bytes(o.m[i]).equals(bytes(t)), `m ${i}`).toBe(true));
      v.forEach((t, i) => expect(bytes(o.v[i]).equals(bytes(t)), `v ${i}`).toBe(true));
      expect(backend.readStats()).toEqual(stats.toState());
    });
  }

  it('changes nothing on a step whose loss is not finite, and the next step is that of a fresh backend', () => {
    const xs = batches(9, 3);
    const p0 = startParams(xs[0]);
    const a = new CpuTrainingBackend(createReferenceKernels, init({ params: copy(p0) }));
    const b = new CpuTrainingBackend(createReferenceKernels, init({ params: copy(p0) }));
    a.step(request(xs[0], 0));
    b.step(request(xs[0], 0));
    const before = { p: copy(a.readParams()), m: a.readOptimizer().m.map((t) => t.slice()), stats: a.readStats() };
    const bad = xs[1].slice();
    bad[7] = NaN;
    const r = a.step(request(bad, 1));
    expect(r.applied).toBe(false);
    expect(Number.isFinite(r.terms.total)).toBe(false);
    tensors(before.p).forEach((t, i) => expect(bytes(tensors(a.readParams())[i]).equals(bytes(t))).toBe(true));
    before.m.forEach((t, i) => expect(bytes(a.readOptimizer().m[i]).equals(bytes(t))).toBe(true));
    expect(a.readStats()).toEqual(before.stats);
    // no gradient of the failed step lingers
    expect(a.step(request(xs[2], 1))).toEqual(b.step(request(xs[2], 1)));
    expect(bytes(a.readParams().Wdec).equals(bytes(b.readParams().Wdec))).toBe(true);
  });

  it('applies aux_k only while features are dead and aux_zipf only while the dying set is not empty', () => {
    const xs = batches(9, 3);
    const never = new CpuTrainingBackend(createReferenceKernels, init({ params: startParams(xs[0]), deadWindow: 1e12 }));
    for (const x of xs) expect(never.step({ ...request(x, 0), auxZipf: { k: 8, coef: 1 } }).terms).toMatchObject({ auxK: 0, auxZipf: 0 });
    const zipf = new CpuTrainingBackend(createReferenceKernels, init({ params: startParams(xs[0]), deadWindow: 1e12 }));
    zipf.setDying(dyingSet);
    expect(zipf.step({ ...request(xs[0], 0), auxZipf: { k: 8, coef: 1 } }).terms.auxZipf).toBeGreaterThan(0);
    zipf.setDying(new Uint8Array(F));
    expect(zipf.step({ ...request(xs[1], 0), auxZipf: { k: 8, coef: 1 } }).terms.auxZipf).toBe(0);
  });

  it('reads back what was written, and a write copies (the source can change afterwards)', () => {
    const xs = batches(9, 2);
    const a = new CpuTrainingBackend(createReferenceKernels, init());
    const p = startParams(xs[0]);
    a.writeParams(p);
    const kept = copy(p);
    p.Wdec.fill(7);
    expect(bytes(a.readParams().Wdec).equals(bytes(kept.Wdec))).toBe(true);
    const m = tensors(p).map((t, i) => new Float32Array(t.length).fill(i + 0.5));
    const v = tensors(p).map((t, i) => new Float32Array(t.length).fill(i + 0.25));
    a.writeOptimizer(m, v);
    m[0].fill(0);
    expect(a.readOptimizer().m[0][0]).toBe(0.5);
    expect(a.readOptimizer().v[3][0]).toBe(3.25);
    const other = new CpuTrainingBackend(createReferenceKernels, init({ params: startParams(xs[0]) }));
    other.step(request(xs[0], 0));
    other.step(request(xs[1], 1));
    a.writeStats(other.readStats());
    expect(a.readStats()).toEqual(other.readStats());
    expect([...a.readDensity()]).toEqual([...FeatureStats.fromState(other.readStats()).density]);
  });

  it('refuses weights, moments, statistics or a dying mask of another width', () => {
    const a = new CpuTrainingBackend(createReferenceKernels, init());
    expect(() => a.writeParams(allocParams(d, F + 1))).toThrow(/weights/);
    expect(() => a.setDying(new Uint8Array(F - 1))).toThrow(/dying mask/);
    expect(() => a.writeStats(new FeatureStats(F + 2).toState())).toThrow(/statistics/);
    expect(() => a.writeOptimizer([], [])).toThrow(/moment/);
  });
});

describe('the Trainer on the backend contract', () => {
  it('gives the same trace on a backend that copies at every crossing, as a device backend must', () => {
    expect(recordTrace({ backend: isolating(cpuBackend(createReferenceKernels)) })).toEqual(recordTrace(createReferenceKernels));
  });

  it.runIf(nativeAvailable())('gives the same trace on an isolating native backend', () => {
    const native = kernelFactory('native');
    expect(recordTrace({ backend: isolating(cpuBackend(native)) })).toEqual(recordTrace(native));
  });

  it('passes per step only the batch and O(F) vectors; density and the dying set every rankInterval steps; state only when asked', () => {
    const log: Crossing[] = [];
    const rankInterval = 3;
    const t = trainer({ activation: 'mutual', steps: 4, phases: [{ activation: 'feature', steps: 4 }], rankInterval, nfmCoef: 0.01, nfmSample: 8 }, 8, { backend: logging(cpuBackend(createReferenceKernels), log) });
    const xs = batches(5, 8);
    t.init(xs[0]);
    expect(log.map((c) => c.method)).toEqual(['writeParams']);
    xs.forEach((x, s) => {
      log.length = 0;
      t.trainStep(x);
      const ranks = s > 0 && s % rankInterval === 0;
      expect(log.map((c) => c.method), `step ${s}`).toEqual(ranks ? ['readDensity', 'setDying', 'step'] : ['step']);
      for (const c of log) {
        // the batch is B×d; everything else that crosses is at most one value per feature
        const big = c.arrays.filter((n) => n > F);
        expect(big, `${c.method} at step ${s}`).toEqual(c.method === 'step' ? [B * d] : []);
      }
    });
    log.length = 0;
    t.snapshot({ moments: false });
    expect(log.map((c) => c.method)).toEqual(['readStats']);
    log.length = 0;
    t.snapshot();
    expect(log.map((c) => c.method).sort()).toEqual(['readOptimizer', 'readStats']);
  });

  it('stops a diverged run with a user error and leaves the weights of the last good step', () => {
    const t = trainer({ activation: 'topk' }, 3, createReferenceKernels);
    const xs = batches(5, 2);
    t.init(xs[0]);
    t.trainStep(xs[0]);
    const good = t.params.Wdec.slice();
    const bad = xs[1].slice().fill(Infinity);
    expect(() => t.trainStep(bad)).toThrow(UserError);
    expect(() => t.trainStep(bad)).toThrow(/diverged/);
    expect(t.step).toBe(1);
    expect(bytes(t.params.Wdec).equals(bytes(good))).toBe(true);
  });

  it('takes kernels or a backend, not both', () => {
    const cfg = resolveConfig({ width: F, batchSize: B, k: 4, steps: 1 });
    expect(() => new Trainer({ cfg, d, F, deadWindow: B, kernels: createReferenceKernels, backend: cpuBackend(createReferenceKernels) })).toThrow(/not both/);
  });
});

describe('sae train on a backend', () => {
  it('trains through the given backend and disposes of it at the end, also when the run fails', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-backend-'));
    try {
      const data = path.join(root, 'synth');
      await writeSynth({ out: data, d: 8, fTrue: 16, kTrue: 2, rows: 512, seed: 2 });
      const config = { activation: 'topk', width: 16, k: 2, batchSize: 32, steps: 6, logEvery: 3, checkpointEvery: 100 };
      const log: Crossing[] = [];
      const s = await train({ data, out: path.join(root, 'ok'), config, backend: logging(cpuBackend(createReferenceKernels), log) });
      expect(s.steps).toBe(6);
      expect(log.filter((c) => c.method === 'step')).toHaveLength(6);
      expect(log.at(-1)?.method).toBe('dispose');

      log.length = 0;
      const failing: typeof cpuBackend = (k) => (i) => {
        const b = logging(cpuBackend(k), log)(i);
        let n = 0;
        return Object.assign(Object.create(b) as typeof b, {
          step: (r: StepRequest) => {
            if (++n === 3) throw new Error('device lost');
            return b.step(r);
          },
        });
      };
      await expect(train({ data, out: path.join(root, 'fail'), config, backend: failing(createReferenceKernels) })).rejects.toThrow('device lost');
      expect(log.at(-1)?.method).toBe('dispose');
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });
});

describe('backendFactory and --kernels', () => {
  it('puts reference, native and auto on the CPU backend over those kernels', () => {
    const shape = init();
    expect(backendFactory('reference')(shape).name).toBe('cpu/reference');
    expect(backendFactory('auto')(shape).name).toBe(nativeAvailable() ? 'cpu/native' : 'cpu/reference');
    if (nativeAvailable()) expect(backendFactory('native')(shape).name).toBe('cpu/native');
    expect(backendFactory('reference')(shape).device).toBe('cpu');
  });

  it('fails cuda in one line that says the CUDA backend is unavailable and why, from every factory', () => {
    for (const f of [() => backendFactory('cuda'), () => kernelFactory('cuda'), () => lmKernelFactory('cuda')]) {
      let err: unknown;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UserError);
      const msg = (err as Error).message;
      expect(msg).toMatch(/^--kernels cuda: CUDA backend unavailable[,:] .+; use --kernels native or reference$/);
      expect(msg).not.toContain('\n');
    }
  });
});
