import { describe, expect, it } from 'vitest';
import { createReferenceKernels } from '../src/kernels/reference.js';
import type { SaeParams, Selection } from '../src/kernels/types.js';
import { allocWorkspace, lossAndGrad, type AuxLossSpec, type ObjectiveSpec } from '../src/sae/objective.js';
import { allocParams, tensors } from '../src/kernels/params.js';
import { Rng } from '../src/util/rng.js';

// Central finite differences in float64 against the analytic gradients of lossAndGrad (SPEC §7).
const d = 6;
const F = 10;
const B = 5;

function randomProblem(seed: number) {
  const rng = new Rng(seed);
  const p = allocParams(d, F, Float64Array);
  for (const t of tensors(p)) for (let i = 0; i < t.length; i++) t[i] = rng.normal() * 0.5;
  // positive encoder bias so that plenty of affinities are positive
  for (let j = 0; j < F; j++) p.bEnc[j] = 0.3 + 0.2 * rng.normal();
  const x = new Float64Array(B * d);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal();
  return { p, x };
}

function evalLoss(p: SaeParams, x: Float64Array, spec: ObjectiveSpec, g?: SaeParams) {
  const k = createReferenceKernels({ d, F, maxB: B });
  const ws = allocWorkspace(d, B, B * F, 2, B * F, Float64Array);
  const terms = lossAndGrad(k, p, g ?? allocParams(d, F, Float64Array), x, B, spec, ws);
  return Object.assign(terms, { residual: x.map((v, i) => v - ws.xhat[i]) });
}

function checkGradients(spec: ObjectiveSpec, seed = 1) {
  const { p, x } = randomProblem(seed);
  const g = allocParams(d, F, Float64Array);
  const base = evalLoss(p, x, spec, g);
  expect(Number.isFinite(base.total)).toBe(true);
  // the aux target e = x − x̂ carries no gradient (SPEC §7): hold it at its unperturbed value
  spec = { ...spec, auxResidual: base.residual };
  const h = 1e-6;
  let worst = 0;
  let nonzero = 0;
  const ps = tensors(p);
  const gs = tensors(g);
  for (let t = 0; t < ps.length; t++) {
    for (let i = 0; i < ps[t].length; i++) {
      const keep = ps[t][i];
      ps[t][i] = keep + h;
      const up = evalLoss(p, x, spec).total;
      ps[t][i] = keep - h;
      const down = evalLoss(p, x, spec).total;
      ps[t][i] = keep;
      const fd = (up - down) / (2 * h);
      const err = Math.abs(fd - gs[t][i]) / Math.max(1e-4, Math.abs(fd) + Math.abs(gs[t][i]));
      worst = Math.max(worst, err);
      if (Math.abs(fd) > 1e-8) nonzero++;
    }
  }
  expect(nonzero).toBeGreaterThan(10);
  expect(worst).toBeLessThan(1e-5);
  return base;
}

const selections: Array<[string, Selection, number]> = [
  ['relu', { kind: 'relu' }, 0.1],
  ['topk', { kind: 'topk', k: 3 }, 0],
  ['mutual', { kind: 'mutual', M: 3 * B }, 0],
  ['feature', { kind: 'feature', capacity: Int32Array.from({ length: F }, (_, j) => 1 + (j % 3)) }, 0],
];

function mask(ids: number[]): Uint8Array {
  const m = new Uint8Array(F);
  for (const j of ids) m[j] = 1;
  return m;
}

const none = { aux: [] as AuxLossSpec[], nfmSample: new Int32Array(0), nfmCoef: 0, nfmInfCoef: 0 };

describe('analytic gradients match central finite differences (float64)', () => {
  for (const [name, selection, l1Coef] of selections) {
    it(`reconstruction loss${l1Coef ? ' + L1' : ''} with ${name}`, () => {
      const r = checkGradients({ selection, l1Coef, ...none });
      expect(r.recon).toBeGreaterThan(0);
      if (l1Coef) expect(r.l1).toBeGreaterThan(0);
    });

    it(`aux_k over dead features with ${name}`, () => {
      const r = checkGradients({ selection, l1Coef, ...none, aux: [{ name: 'auxK', mask: mask([1, 4, 7, 8]), k: 2, coef: 0.7 }] });
      expect(r.auxK).toBeGreaterThan(0);
    });

    it(`aux_zipf over dying features with ${name}`, () => {
      const r = checkGradients({ selection, l1Coef, ...none, aux: [{ name: 'auxZipf', mask: mask([6, 7, 8, 9]), k: 3, coef: 0.5 }] });
      expect(r.auxZipf).toBeGreaterThan(0);
    });

    it(`nfm_loss and nfm_inf_loss on sampled features with ${name}`, () => {
      const r = checkGradients({ selection, l1Coef, aux: [], nfmSample: Int32Array.from([0, 2, 3, 5, 9]), nfmCoef: 0.3, nfmInfCoef: 0.2 });
      expect(r.nfm).toBeGreaterThan(0);
      expect(r.nfmInf).not.toBe(0);
    });
  }

  it('all terms together with mutual choice', () => {
    checkGradients({
      selection: { kind: 'mutual', M: 2 * B },
      l1Coef: 0,
      aux: [
        { name: 'auxK', mask: mask([0, 5]), k: 1, coef: 1 / 32 },
        { name: 'auxZipf', mask: mask([5, 6, 7, 8, 9]), k: 2, coef: 1 / 32 },
      ],
      nfmSample: Int32Array.from([1, 3, 4, 8]),
      nfmCoef: 0.1,
      nfmInfCoef: 0.1,
    }, 7);
  });
});

describe('auxiliary losses vanish without dead or dying features', () => {
  it('aux_k and aux_zipf are zero and add no gradient when their masks are empty', () => {
    const { p, x } = randomProblem(3);
    const g1 = allocParams(d, F, Float64Array);
    const g2 = allocParams(d, F, Float64Array);
    const sel: Selection = { kind: 'topk', k: 3 };
    const plain = evalLoss(p, x, { selection: sel, l1Coef: 0, ...none }, g1);
    const withAux = evalLoss(p, x, {
      selection: sel, l1Coef: 0, ...none,
      aux: [
        { name: 'auxK', mask: new Uint8Array(F), k: 4, coef: 1 },
        { name: 'auxZipf', mask: new Uint8Array(F), k: 4, coef: 1 },
      ],
    }, g2);
    expect(withAux.auxK).toBe(0);
    expect(withAux.auxZipf).toBe(0);
    expect(withAux.total).toBe(plain.total);
    tensors(g1).forEach((t, i) => expect(Array.from(tensors(g2)[i])).toEqual(Array.from(t)));
  });
});
