// The SAE kernels of the native addon against the reference kernels, for Node's test runner (see
// helpers.mjs): the encoder GEMM and every selection (exact on integer-valued problems, ties
// included), the selection stage on given affinities, decode and both backward passes (sparse and
// dense-code paths), the optimizer, and bit-identical results run to run. Shapes are small (these
// run under qemu) but none is a multiple of a micro-tile (MR 8/6/14 rows, NR 8/16/32 columns) or
// vector width, and one spans several feature blocks. Run: node test/emulated/sae.test.mjs
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  allocCodes, allocParams, auxRequests, cloneParams, codesOf, exactProblem, expectClose, imp, output, randomMask,
  randomProblem, requireNative, Rng, sameBits, selections, tensors,
} from './helpers.mjs';

const { native, info } = await requireNative();
const { createNativeKernels, nativeExtras, nativeKernelsFor } = native;
const { createReferenceKernels } = await imp('kernels/reference.js');
const { composedOptimizerStep } = await imp('kernels/optimizer.js');
const { maskedTopK, select } = await imp('kernels/selection.js');

const SHAPES = [
  [1, 1, 1],
  [5, 7, 1],
  [13, 29, 3],
  [24, 61, 33],
  [40, 150, 70],
  [17, 997, 37],
];

describe(`native encodeSelect (${info.isas.join(', ')})`, () => {
  for (const isa of info.isas) {
    it(`matches the reference exactly on exact-arithmetic problems, ties included (${isa})`, () => {
      const rng = new Rng(11);
      for (const [d, F, B] of SHAPES) {
        const { p, x } = exactProblem(rng, d, F, B);
        const nk = nativeKernelsFor(isa)({ d, F, maxB: B + 3 });
        const rk = createReferenceKernels({ d, F, maxB: B + 3 });
        const aux = auxRequests(rng, F);
        for (const sel of selections(rng, B, F)) {
          const on = output(B, d, aux.length);
          const or = output(B, d, aux.length);
          nk.encodeSelect(p, x, B, sel, aux, on);
          rk.encodeSelect(p, x, B, sel, aux, or);
          const what = `${isa} ${sel.kind} d=${d} F=${F} B=${B}`;
          assert.ok(sameBits(on.xc, or.xc), `${what} xc`);
          assert.deepEqual(codesOf(on.codes), codesOf(or.codes), what);
          for (let a = 0; a < aux.length; a++) assert.deepEqual(codesOf(on.aux[a]), codesOf(or.aux[a]), `${what} aux ${a}`);
        }
      }
    });

    it(`selection stage on given affinities with ties everywhere equals the reference (${isa})`, () => {
      const rng = new Rng(13);
      for (const [, F, B] of [...SHAPES, [0, 40, 1], [0, 300, 200]]) {
        const z = new Float32Array(B * F);
        for (let i = 0; i < z.length; i++) z[i] = [-1, 0, -0, 0.5, 1, 1, 2, 3][rng.int(8)];
        const ext = nativeExtras(nativeKernelsFor(isa)({ d: 1, F, maxB: B }));
        const aux = auxRequests(rng, F);
        for (const sel of selections(rng, B, F)) {
          const codes = allocCodes(B, 2);
          const auxCodes = aux.map(() => allocCodes(B, 2));
          ext.selectFrom(z, B, sel, aux, codes, auxCodes);
          const want = allocCodes(B, 2);
          select(z, B, F, sel, want);
          assert.deepEqual(codesOf(codes), codesOf(want), `${sel.kind} F=${F} B=${B}`);
          for (let a = 0; a < aux.length; a++) {
            const wa = allocCodes(B, 2);
            maskedTopK(z, B, F, aux[a].mask, aux[a].k, wa);
            assert.deepEqual(codesOf(auxCodes[a]), codesOf(wa), `aux ${a} F=${F} B=${B}`);
          }
        }
      }
    });
  }

  it('computes z′ like a float64 product within float32 rounding, and selects exactly what the reference selects on that z′', () => {
    const rng = new Rng(12);
    for (const [d, F, B] of [...SHAPES, [96, 300, 75]]) {
      const { p, x } = randomProblem(rng, d, F, B);
      const nk = createNativeKernels({ d, F, maxB: B });
      const ext = nativeExtras(nk);
      const z = new Float32Array(B * F);
      const xc = new Float32Array(B * d);
      ext.affinities(p, x, B, xc, z);
      const zr = new Float64Array(B * F);
      let scale = 0;
      for (let b = 0; b < B; b++) {
        for (let j = 0; j < F; j++) {
          let s = 0;
          for (let i = 0; i < d; i++) s += (x[b * d + i] - p.bDec[i]) * p.WencT[j * d + i];
          zr[b * F + j] = s + p.bEnc[j];
          scale = Math.max(scale, Math.abs(s));
        }
      }
      expectClose(z, zr, 1e-5, 1e-6 * (1 + scale), `affinities d=${d} F=${F} B=${B}`);
      const aux = auxRequests(rng, F);
      for (const sel of selections(rng, B, F)) {
        const on = output(B, d, aux.length);
        nk.encodeSelect(p, x, B, sel, aux, on);
        const want = allocCodes(B, 4);
        select(z, B, F, sel, want);
        assert.deepEqual(codesOf(on.codes), codesOf(want), `${sel.kind} d=${d} F=${F} B=${B}`);
        for (let a = 0; a < aux.length; a++) {
          const wa = allocCodes(B, 4);
          maskedTopK(z, B, F, aux[a].mask, aux[a].k, wa);
          assert.deepEqual(codesOf(on.aux[a]), codesOf(wa));
        }
      }
    }
  });
});

// ------------------------------------------------------------------- sparse and dense numerics

function sparseProblem(seed, d, F, B, sel) {
  const rng = new Rng(seed);
  const { p, x } = randomProblem(rng, d, F, B);
  const out = output(B, d, 0);
  createReferenceKernels({ d, F, maxB: B }).encodeSelect(p, x, B, sel, [], out);
  const dOut = new Float32Array(B * d).map(() => rng.normal());
  const dz = new Float32Array(out.codes.nnz).map(() => rng.normal());
  return { p, x, xc: out.xc, codes: out.codes, dOut, dz, rng };
}

// relu and topk k=4 of 23 are dense codes (nnz > B·F/12): the packed-GEMM path of the sparse passes
const SPARSE_CASES = [
  [1, 1, 1, { kind: 'relu' }],
  [7, 23, 5, { kind: 'topk', k: 4 }],
  [33, 300, 64, { kind: 'topk', k: 8 }],
  [48, 700, 45, { kind: 'mutual', M: 45 * 6 }],
  [20, 260, 40, { kind: 'relu' }],
];

describe('native sparse kernels and optimizer', () => {
  for (const isa of info.isas) {
    it(`decode, decodeBackward and encoderBackward match the reference (${isa})`, () => {
      for (const [d, F, B, sel] of SPARSE_CASES) {
        const { p, xc, codes, dOut, dz, rng } = sparseProblem(17 + d, d, F, B, sel);
        const nk = nativeKernelsFor(isa)({ d, F, maxB: B });
        const rk = createReferenceKernels({ d, F, maxB: B });
        const what = `${isa} d=${d} F=${F} B=${B} nnz=${codes.nnz}`;
        for (const withBias of [true, false]) {
          const a = new Float32Array(B * d), b = new Float32Array(B * d);
          nk.decode(p, codes, a, withBias);
          rk.decode(p, codes, b, withBias);
          expectClose(a, b, 1e-5, 1e-5, `decode ${what}`);
        }
        const g0 = new Float32Array(F * d).map(() => 0.1 * rng.normal());
        const ga = g0.slice(), gb = g0.slice();
        const dza = new Float32Array(codes.nnz), dzb = new Float32Array(codes.nnz);
        nk.decodeBackward(p, codes, dOut, ga, dza);
        rk.decodeBackward(p, codes, dOut, gb, dzb);
        expectClose(ga, gb, 1e-5, 1e-5, `decodeBackward gWdec ${what}`);
        expectClose(dza, dzb, 1e-5, 1e-5, `decodeBackward dz ${what}`);
        const gA = allocParams(d, F), gB = allocParams(d, F);
        for (const [s, t] of [[gA, gB]]) {
          for (let i = 0; i < s.WencT.length; i++) s.WencT[i] = t.WencT[i] = 0.01 * i;
          for (let j = 0; j < F; j++) s.bEnc[j] = t.bEnc[j] = -0.5 * j;
          for (let i = 0; i < d; i++) s.bDec[i] = t.bDec[i] = 1;
        }
        nk.encoderBackward(p, xc, codes, dz, gA);
        rk.encoderBackward(p, xc, codes, dz, gB);
        expectClose(gA.WencT, gB.WencT, 1e-5, 1e-4, `encoderBackward gWencT ${what}`);
        expectClose(gA.bEnc, gB.bEnc, 1e-5, 1e-4, `encoderBackward gBenc ${what}`);
        expectClose(gA.bDec, gB.bDec, 1e-5, 1e-4, `encoderBackward gBdec ${what}`);
        assert.ok(gA.Wdec.every((v) => v === 0));
      }
    });

    it(`adamw, sumSquares, projectDecoderGrad and normalizeDecoderRows match the reference (${isa})`, () => {
      const rng = new Rng(18);
      const nk = nativeKernelsFor(isa)({ d: 8, F: 8, maxB: 1 });
      const rk = createReferenceKernels({ d: 8, F: 8, maxB: 1 });
      for (const n of [1, 15, 16, 17, 1000, 20_001]) {
        const p = new Float32Array(n).map(() => rng.normal());
        const g = new Float32Array(n).map(() => rng.normal() * 1e-2);
        const m = new Float32Array(n).map(() => rng.normal() * 1e-3);
        const v = new Float32Array(n).map(() => Math.abs(rng.normal()) * 1e-5);
        assert.ok(Math.abs(nk.sumSquares(g) / rk.sumSquares(g) - 1) < 5e-7, `sumSquares n=${n}`);
        for (const [step, decay] of [[1, true], [7, false]]) {
          const h = { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step, gradScale: 0.7 };
          const a = [p.slice(), g.slice(), m.slice(), v.slice()];
          const b = [p.slice(), g.slice(), m.slice(), v.slice()];
          nk.adamw(a[0], a[1], a[2], a[3], h, decay);
          rk.adamw(b[0], b[1], b[2], b[3], h, decay);
          expectClose(a[0], b[0], 1e-6, 3e-7, `adamw param n=${n}`);
          assert.ok(a[1].every((x) => x === 0));
          expectClose(a[2], b[2], 1e-5, 1e-9, `adamw m n=${n}`);
          expectClose(a[3], b[3], 1e-5, 1e-11, `adamw v n=${n}`);
        }
      }
      for (const [F, d] of [[1, 1], [3, 5], [50, 17], [60, 768]]) {
        const W = new Float32Array(F * d).map(() => rng.normal());
        W.fill(0, 0, d);
        const G = new Float32Array(F * d).map(() => rng.normal());
        const ga = G.slice(), gb = G.slice();
        nk.projectDecoderGrad(W, ga, F, d);
        rk.projectDecoderGrad(W, gb, F, d);
        expectClose(ga, gb, 1e-4, 1e-5, `projectDecoderGrad F=${F} d=${d}`);
        const wa = W.slice(), wb = W.slice();
        nk.normalizeDecoderRows(wa, F, d);
        rk.normalizeDecoderRows(wb, F, d);
        expectClose(wa, wb, 1e-6, 1e-7, `normalizeDecoderRows F=${F} d=${d}`);
      }
    });

    it(`fused optimizerStep matches the composed step over the reference and the native primitives (${isa})`, () => {
      const rng = new Rng(23);
      for (const [F, d] of [[1, 1], [3, 5], [50, 17], [37, 100], [130, 131]]) {
        const nk = nativeKernelsFor(isa)({ d, F, maxB: 1 });
        const rk = createReferenceKernels({ d, F, maxB: 1 });
        const p = allocParams(d, F);
        for (const t of tensors(p)) for (let i = 0; i < t.length; i++) t[i] = rng.normal();
        p.Wdec.fill(0, 0, d);
        const g = allocParams(d, F);
        for (const t of tensors(g)) for (let i = 0; i < t.length; i++) t[i] = rng.normal() * 1e-2;
        const m = tensors(p).map((t) => new Float32Array(t.length).map(() => rng.normal() * 1e-3));
        const v = tensors(p).map((t) => new Float32Array(t.length).map(() => Math.abs(rng.normal()) * 1e-5));
        const fullNorm = Math.sqrt(tensors(g).reduce((s, t) => s + rk.sumSquares(t), 0));
        for (const maxGradNorm of [fullNorm * 0.3, 0, fullNorm * 10]) {
          const h = { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: 3, maxGradNorm };
          const run = (how) => {
            const q = cloneParams(p), gg = cloneParams(g);
            const mm = m.map((t) => t.slice()), vv = v.map((t) => t.slice());
            const norm = how === 'fused' ? nk.optimizerStep(q, gg, mm, vv, h) : composedOptimizerStep(how === 'native' ? nk : rk, q, gg, mm, vv, h);
            return { q, gg, mm, vv, norm };
          };
          const a = run('fused');
          for (const how of ['native', 'reference']) {
            const b = run(how);
            const what = `F=${F} d=${d} maxGradNorm=${maxGradNorm.toPrecision(3)} vs ${how}`;
            assert.ok(Math.abs(a.norm / b.norm - 1) < 1e-6, `norm ${what}`);
            const pa = tensors(a.q), pb = tensors(b.q);
            for (let i = 0; i < 4; i++) {
              expectClose(pa[i], pb[i], 1e-5, 1e-6, `param ${i} ${what}`);
              expectClose(a.mm[i], b.mm[i], 1e-4, 1e-9, `m ${i} ${what}`);
              expectClose(a.vv[i], b.vv[i], 1e-4, 1e-11, `v ${i} ${what}`);
            }
          }
          for (const t of tensors(a.gg)) assert.ok(t.every((x) => x === 0));
        }
      }
    });
  }

  it('gives bit-identical results run to run, for every kernel', () => {
    const d = 40, F = 300, B = 45;
    const runOnce = () => {
      const { p, x, dOut, rng } = sparseProblem(19, d, F, B, { kind: 'topk', k: 5 });
      const nk = createNativeKernels({ d, F, maxB: B });
      const res = [];
      const aux = [{ mask: randomMask(rng, F, 0.5), k: 16 }];
      for (const sel of [{ kind: 'topk', k: 5 }, { kind: 'mutual', M: 5 * B }, { kind: 'feature', capacity: new Int32Array(F).fill(2) }, { kind: 'relu' }]) {
        const out = output(B, d, 1);
        nk.encodeSelect(p, x, B, sel, aux, out);
        const c = out.codes;
        res.push(out.xc, c.rowPtr, c.index.slice(0, c.nnz), c.value.slice(0, c.nnz), out.aux[0].index.slice(0, out.aux[0].nnz));
        const xhat = new Float32Array(B * d);
        nk.decode(p, c, xhat, true);
        const gW = new Float32Array(F * d);
        const dz = new Float32Array(c.nnz);
        nk.decodeBackward(p, c, dOut, gW, dz);
        const g = allocParams(d, F);
        nk.encoderBackward(p, out.xc, c, dz, g);
        res.push(xhat, gW, dz, g.WencT, g.bEnc, g.bDec);
        const r = cloneParams(p), gr = cloneParams(g);
        for (let i = 0; i < gr.Wdec.length; i++) gr.Wdec[i] = 1e-2 * p.WencT[i];
        const mm = tensors(r).map((t) => new Float32Array(t.length).fill(1e-4)), vv = tensors(r).map((t) => new Float32Array(t.length).fill(1e-6));
        const norm = nk.optimizerStep(r, gr, mm, vv, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-5, step: 2, maxGradNorm: 0.01 });
        res.push(...tensors(r), ...mm, ...vv, new Float32Array(new Float64Array([norm]).buffer));
      }
      return res;
    };
    const a = runOnce();
    const b = runOnce();
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) assert.ok(sameBits(a[i], b[i]), `result ${i}`);
  });
});
