// The SAE kernels of the native addon against the reference kernels, written once for two runners:
// test/native-kernels.test.ts (vitest, against src/, size 'full') and test/emulated/sae.test.mjs
// (Node's runner under qemu, against dist/, size 'emulated': smaller shapes that keep every tail).
// The kernel modules come in as `m`, the runner's describe/it as `t`; assertions are node:assert.
//
// The reference kernels are the oracle (issue 3). Selections must be identical whenever both sides
// see the same affinities z' (exact-arithmetic problems, or the native z' fed to the reference
// selection); dense numerics must agree within float32 tolerance; every native kernel must give
// bit-identical results run to run. No shape is a multiple of a micro-tile (MR 8/6/14 rows, NR
// 8/16/32 columns) or vector width, and some span several feature blocks.
import assert from 'node:assert/strict';
import { expectClose, sameBits } from './measures.mjs';

/** Problem generators over the given kernel modules (allocParams, tensors, allocCodes, Rng, createReferenceKernels). */
export function saeProblems(m) {
  const { allocParams, tensors, allocCodes, Rng } = m;

  /** Integer-valued data (|z'| ≪ 2^24): float32 and float64 sums are exact, so z' is identical on
   * both sides and even exact ties must be broken the same way. */
  function exactProblem(rng, d, F, B) {
    const p = allocParams(d, F);
    for (let i = 0; i < p.WencT.length; i++) p.WencT[i] = rng.int(7) - 3;
    for (let i = 0; i < p.Wdec.length; i++) p.Wdec[i] = rng.int(5) - 2;
    for (let j = 0; j < F; j++) p.bEnc[j] = rng.int(9) - 3;
    for (let i = 0; i < d; i++) p.bDec[i] = rng.int(3) - 1;
    const x = new Float32Array(B * d);
    for (let i = 0; i < x.length; i++) x[i] = rng.int(5) - 2;
    return { p, x };
  }

  function randomProblem(rng, d, F, B) {
    const p = allocParams(d, F);
    for (const t of tensors(p)) for (let i = 0; i < t.length; i++) t[i] = rng.normal() / Math.sqrt(d);
    for (let j = 0; j < F; j++) p.bEnc[j] = 0.05 * rng.normal();
    const x = new Float32Array(B * d);
    for (let i = 0; i < x.length; i++) x[i] = rng.normal();
    return { p, x };
  }

  function randomMask(rng, F, frac) {
    const mask = new Uint8Array(F);
    for (let j = 0; j < F; j++) mask[j] = rng.next() < frac ? 1 : 0;
    return mask;
  }

  function output(B, d, nAux, capacity = 4) {
    const aux = [];
    for (let a = 0; a < nAux; a++) aux.push(allocCodes(B, capacity));
    return { xc: new Float32Array(B * d), codes: allocCodes(B, capacity), aux };
  }

  /** Every selection kind, with capacities and thresholds that make ties and empty rows likely. */
  function selections(rng, B, F) {
    const cap = new Int32Array(F);
    for (let j = 0; j < F; j++) cap[j] = [0, 1, 2, 3, 7, B, B + 5][rng.int(7)];
    const thr = new Float32Array(F);
    for (let j = 0; j < F; j++) thr[j] = rng.int(5) - 1;
    return [
      { kind: 'topk', k: 3 },
      { kind: 'topk', k: 1 },
      { kind: 'topk', k: F + 3 }, // more than the positives of every token
      { kind: 'mutual', M: 2 * B },
      { kind: 'mutual', M: 1 },
      { kind: 'mutual', M: B * F + 10 },
      { kind: 'feature', capacity: cap },
      { kind: 'feature', capacity: new Int32Array(F).fill(Math.max(1, Math.floor((3 * B) / F))) },
      { kind: 'relu' },
      { kind: 'jumprelu', threshold: thr },
      { kind: 'globalThreshold', threshold: 1.5 },
    ];
  }

  function auxRequests(rng, F) {
    return [
      { mask: randomMask(rng, F, 0.3), k: 2 },
      { mask: randomMask(rng, F, 0.7), k: F },
    ];
  }

  /** Codes selected by the reference on a random problem, with upstream gradients for them. */
  function sparseProblem(seed, d, F, B, sel) {
    const rng = new Rng(seed);
    const { p, x } = randomProblem(rng, d, F, B);
    const out = output(B, d, 0);
    m.createReferenceKernels({ d, F, maxB: B }).encodeSelect(p, x, B, sel, [], out);
    const dOut = new Float32Array(B * d).map(() => rng.normal());
    const dz = new Float32Array(out.codes.nnz).map(() => rng.normal());
    return { p, x, xc: out.xc, codes: out.codes, dOut, dz, rng };
  }

  return { exactProblem, randomProblem, randomMask, output, selections, auxRequests, sparseProblem, codesOf, cloneParams };
}

export function codesOf(c) {
  return {
    B: c.B,
    nnz: c.nnz,
    rowPtr: Array.from(c.rowPtr.subarray(0, c.B + 1)),
    index: Array.from(c.index.subarray(0, c.nnz)),
    value: Array.from(c.value.subarray(0, c.nnz)),
  };
}

export function cloneParams(p) {
  return { d: p.d, F: p.F, WencT: p.WencT.slice(), bEnc: p.bEnc.slice(), Wdec: p.Wdec.slice(), bDec: p.bDec.slice() };
}

// Shapes: tiny, B = 1, F not a multiple of any micro-panel height (14, 6), B not a multiple of
// any tile width (32, 16, 8), and a medium one spanning several feature blocks.
const SHAPES = [
  [1, 1, 1],
  [5, 7, 1],
  [13, 29, 3],
  [24, 61, 33],
  [40, 150, 70],
  [17, 997, 37],
];

// relu and topk k=4 of 23 are dense codes (nnz > B·F/12): the packed-GEMM path of the sparse passes
const SIZES = {
  full: {
    affinities: [...SHAPES, [96, 700, 150]],
    ties: [...SHAPES, [0, 40, 1], [0, 300, 200], [0, 1500, 120]],
    sparse: [
      [1, 1, 1, { kind: 'relu' }],
      [7, 23, 5, { kind: 'topk', k: 4 }],
      [33, 300, 64, { kind: 'topk', k: 8 }],
      [48, 1100, 90, { kind: 'mutual', M: 90 * 6 }],
      [20, 260, 40, { kind: 'relu' }],
    ],
    adamw: [1, 15, 16, 17, 1000, 70_001],
    decoderRows: [[1, 1], [3, 5], [50, 17], [300, 768]],
    // F, d not multiples of any vector width; the last spans several WencT chunks and W_dec row chunks
    optimizer: [[1, 1], [3, 5], [50, 17], [37, 100], [130, 769]],
    repeat: { d: 64, F: 900, B: 130 },
  },
  emulated: {
    affinities: [...SHAPES, [96, 300, 75]],
    ties: [...SHAPES, [0, 40, 1], [0, 300, 200]],
    sparse: [
      [1, 1, 1, { kind: 'relu' }],
      [7, 23, 5, { kind: 'topk', k: 4 }],
      [33, 300, 64, { kind: 'topk', k: 8 }],
      [48, 700, 45, { kind: 'mutual', M: 45 * 6 }],
      [20, 260, 40, { kind: 'relu' }],
    ],
    adamw: [1, 15, 16, 17, 1000, 20_001],
    decoderRows: [[1, 1], [3, 5], [50, 17], [60, 768]],
    optimizer: [[1, 1], [3, 5], [50, 17], [37, 100], [130, 131]],
    repeat: { d: 40, F: 300, B: 45 },
  },
};

/**
 * Registers the checks. m: Rng, allocParams, tensors, allocCodes, select, maskedTopK,
 * createReferenceKernels, createNativeKernels, nativeKernelsFor, nativeExtras,
 * composedOptimizerStep; isas: the instruction sets the addon offers on this CPU.
 */
export function defineSaeKernelChecks(t, m, isas, size) {
  const { describe, it } = t;
  const { Rng, allocParams, tensors, allocCodes, select, maskedTopK, createReferenceKernels, createNativeKernels, nativeKernelsFor, nativeExtras, composedOptimizerStep } = m;
  const { exactProblem, randomProblem, randomMask, output, selections, auxRequests, sparseProblem } = saeProblems(m);
  const S = SIZES[size];

  describe('native encodeSelect', () => {
    for (const isa of isas) {
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
    }

    it('computes z′ like the reference within float32 rounding, and selects exactly what the reference selects on that z′', () => {
      const rng = new Rng(12);
      for (const [d, F, B] of S.affinities) {
        const { p, x } = randomProblem(rng, d, F, B);
        const nk = createNativeKernels({ d, F, maxB: B });
        const ext = nativeExtras(nk);
        const z = new Float32Array(B * F);
        const xc = new Float32Array(B * d);
        ext.affinities(p, x, B, xc, z);
        // reference affinities in float64
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

    it('in bf16 on every unit of every instruction set (emulated where there is none): z′ within the summation-order bound of the rounded operands, and the selections of that z′', () => {
      // the rounding, independently of src/kernels/bf16.ts: RNE on the float32 bits, NaN aside
      const dv = new DataView(new ArrayBuffer(4));
      const r16 = (v) => {
        dv.setFloat32(0, v);
        const b = dv.getUint32(0);
        dv.setUint32(0, ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) << 16);
        return dv.getFloat32(0);
      };
      const rng = new Rng(14);
      let ran = 0;
      for (const isa of isas) {
        for (const unit of ['amx', 'avx512bf16', 'bfmmla', 'emulated']) {
          for (const [d, F, B] of S.affinities) {
            let nk;
            try {
              nk = nativeKernelsFor(isa, { precision: 'bf16', bf16Unit: unit })({ d, F, maxB: B });
            } catch (e) {
              if (/not available/.test(String(e))) break; // a unit this CPU or table lacks
              throw e;
            }
            const { p, x } = randomProblem(rng, d, F, B);
            const z = new Float32Array(B * F);
            const xc = new Float32Array(B * d);
            nativeExtras(nk).affinities(p, x, B, xc, z);
            for (let b = 0; b < B; b++) {
              for (let j = 0; j < F; j++) {
                let s = 0;
                let mag = 0;
                for (let i = 0; i < d; i++) {
                  const t = r16(Math.fround(x[b * d + i] - p.bDec[i])) * r16(p.WencT[j * d + i]);
                  s += t;
                  mag += Math.abs(t);
                }
                const want = s + p.bEnc[j];
                const tol = 2 * d * 2 ** -24 * mag + 2 ** -24 * Math.abs(want) + d * 2 ** -126;
                assert.ok(Math.abs(z[b * F + j] - want) <= tol, `bf16 ${isa}/${unit} d=${d} F=${F} B=${B} z[${b}][${j}] = ${z[b * F + j]}, want ${want} ± ${tol}`);
              }
            }
            for (const sel of selections(rng, B, F)) {
              const on = output(B, d, 0);
              nk.encodeSelect(p, x, B, sel, [], on);
              const want = allocCodes(B, 4);
              select(z, B, F, sel, want);
              assert.deepEqual(codesOf(on.codes), codesOf(want), `bf16 ${isa}/${unit} ${sel.kind} d=${d} F=${F} B=${B}`);
            }
            ran++;
          }
        }
      }
      assert.ok(ran >= isas.length, 'every instruction set runs bf16 at least emulated');
    });

    for (const isa of isas) {
      it(`selection stage on given affinities with ties everywhere equals the reference (${isa})`, () => {
        const rng = new Rng(13);
        for (const [, F, B] of S.ties) {
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
  });

  describe('native sparse kernels and optimizer', () => {
    for (const isa of isas) {
      it(`decode, decodeBackward and encoderBackward match the reference (${isa})`, () => {
        for (const [d, F, B, sel] of S.sparse) {
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
          // gradients accumulate into what is already there
          const g0 = new Float32Array(F * d).map(() => 0.1 * rng.normal());
          const ga = g0.slice(), gb = g0.slice();
          const dza = new Float32Array(codes.nnz), dzb = new Float32Array(codes.nnz);
          nk.decodeBackward(p, codes, dOut, ga, dza);
          rk.decodeBackward(p, codes, dOut, gb, dzb);
          expectClose(ga, gb, 1e-5, 1e-5, `decodeBackward gWdec ${what}`);
          expectClose(dza, dzb, 1e-5, 1e-5, `decodeBackward dz ${what}`);
          const gA = allocParams(d, F), gB = allocParams(d, F);
          for (let i = 0; i < gA.WencT.length; i++) gA.WencT[i] = gB.WencT[i] = 0.01 * i;
          for (let j = 0; j < F; j++) gA.bEnc[j] = gB.bEnc[j] = -0.5 * j;
          for (let i = 0; i < d; i++) gA.bDec[i] = gB.bDec[i] = 1;
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
        for (const n of S.adamw) {
          const p = new Float32Array(n).map(() => rng.normal());
          const g = new Float32Array(n).map(() => rng.normal() * 1e-2);
          const mo = new Float32Array(n).map(() => rng.normal() * 1e-3);
          const v = new Float32Array(n).map(() => Math.abs(rng.normal()) * 1e-5);
          assert.ok(Math.abs(nk.sumSquares(g) / rk.sumSquares(g) - 1) < 5e-7, `sumSquares n=${n}`);
          for (const [step, decay] of [[1, true], [7, false]]) {
            const h = { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step, gradScale: 0.7 };
            const a = [p.slice(), g.slice(), mo.slice(), v.slice()];
            const b = [p.slice(), g.slice(), mo.slice(), v.slice()];
            nk.adamw(a[0], a[1], a[2], a[3], h, decay);
            rk.adamw(b[0], b[1], b[2], b[3], h, decay);
            // absolute tolerances: a few float32 ulps of the terms (m ~ 1e-3, v ~ 1e-5, p ~ 1)
            expectClose(a[0], b[0], 1e-6, 3e-7, `adamw param n=${n}`);
            assert.ok(a[1].every((x) => x === 0));
            expectClose(a[2], b[2], 1e-5, 1e-9, `adamw m n=${n}`);
            expectClose(a[3], b[3], 1e-5, 1e-11, `adamw v n=${n}`);
          }
        }
        for (const [F, d] of S.decoderRows) {
          const W = new Float32Array(F * d).map(() => rng.normal());
          W.fill(0, 0, d); // a zero row stays zero
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
        for (const [F, d] of S.optimizer) {
          const nk = nativeKernelsFor(isa)({ d, F, maxB: 1 });
          const rk = createReferenceKernels({ d, F, maxB: 1 });
          const p = allocParams(d, F);
          for (const t of tensors(p)) for (let i = 0; i < t.length; i++) t[i] = rng.normal();
          p.Wdec.fill(0, 0, d); // a zero row: no projection, stays zero
          const g = allocParams(d, F);
          for (const t of tensors(g)) for (let i = 0; i < t.length; i++) t[i] = rng.normal() * 1e-2;
          const mo = tensors(p).map((t) => new Float32Array(t.length).map(() => rng.normal() * 1e-3));
          const v = tensors(p).map((t) => new Float32Array(t.length).map(() => Math.abs(rng.normal()) * 1e-5));
          const fullNorm = Math.sqrt(tensors(g).reduce((s, t) => s + rk.sumSquares(t), 0));
          // clipping active (limit well below the norm), off (0), inactive (limit above the norm)
          for (const maxGradNorm of [fullNorm * 0.3, 0, fullNorm * 10]) {
            const h = { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: 3, maxGradNorm };
            const run = (how) => {
              const q = cloneParams(p), gg = cloneParams(g);
              const mm = mo.map((t) => t.slice()), vv = v.map((t) => t.slice());
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
            // the zero row is not renormalised (checked against the composed step above)
            for (let j = 1; j < F; j++) {
              let nn = 0;
              for (let i = 0; i < d; i++) nn += a.q.Wdec[j * d + i] ** 2;
              assert.ok(Math.abs(Math.sqrt(nn) - 1) < 1e-5, `row ${j} norm F=${F} d=${d}`);
            }
          }
        }
      });
    }

    it('gives bit-identical results run to run, for every kernel', () => {
      const { d, F, B } = S.repeat;
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
          res.push(new Float32Array([nk.sumSquares(g.WencT), nk.sumSquares(gW)]));
          const q = cloneParams(p);
          nk.projectDecoderGrad(q.Wdec, gW, F, d);
          const mq = new Float32Array(F * d), vq = new Float32Array(F * d);
          nk.adamw(q.Wdec, gW, mq, vq, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-5, step: 1, gradScale: 1 }, true);
          nk.normalizeDecoderRows(q.Wdec, F, d);
          res.push(q.Wdec, mq, vq);
          const r = cloneParams(p), gr = cloneParams(g);
          for (let i = 0; i < gr.Wdec.length; i++) gr.Wdec[i] = 1e-2 * p.WencT[i]; // gW was zeroed by adamw
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
}

const TRAIN = {
  full: { d: 32, F: 120, B: 96, steps: 6 },
  // d and F not multiples of the 8 × 8 NEON tile; B not a multiple of the 8 tokens of a panel
  emulated: { d: 30, F: 123, B: 90, steps: 5 },
};

/**
 * Short training runs with the native kernels against the same runs with the reference kernels:
 * the first step selects the same features, the losses of every step agree, and the weights move
 * the same way. m: Rng, createNativeKernels, createReferenceKernels, kernelFactory,
 * lmKernelFactory, resolveConfig, Trainer.
 */
export function defineTrainerChecks(t, m, size) {
  const { describe, it } = t;
  const { Rng, createNativeKernels, createReferenceKernels, kernelFactory, lmKernelFactory, resolveConfig, Trainer } = m;
  const { d, F, B, steps } = TRAIN[size];

  function data(n) {
    const rng = new Rng(21);
    return Array.from({ length: n }, () => new Float32Array(B * d).map(() => rng.normal()));
  }

  function train(activation, kernels, extra) {
    const cfg = resolveConfig({ activation, k: 6, width: F, batchSize: B, steps, seed: 3, rankInterval: 2, lr: 2e-3, auxK: 16, ...extra });
    const tr = new Trainer({ cfg, d, F, deadWindow: B, kernels });
    const xs = data(steps);
    tr.init(xs[0]);
    const losses = [];
    let first = null;
    for (const x of xs) {
      losses.push(tr.trainStep(x).total);
      // the trainer's workspace is private in TypeScript; read the first step's codes for the check
      if (!first) first = codesOf(tr.ws.enc.codes);
    }
    return { params: tr.params, losses, first };
  }

  // Float32 sums differ from the reference's float64 ones in the last bits, and Adam turns a
  // gradient element that is zero up to rounding (|g| ≈ eps) into a step of any size up to lr. So
  // compare the weights' movement as a whole (and the losses), not element by element.
  function movement(a, b, w0) {
    let diff = 0, moved = 0;
    for (let i = 0; i < a.length; i++) {
      diff += (a[i] - b[i]) ** 2;
      moved += (b[i] - w0[i]) ** 2;
    }
    return Math.sqrt(diff / moved);
  }

  describe('Trainer with native kernels against the reference kernels', () => {
    for (const activation of ['topk', 'mutual', 'feature', 'relu']) {
      it(`${activation}: same first selections, close losses and weights after ${steps} steps`, () => {
        // mutual with both aux losses on: the aux selections and their passes run too
        const extra = activation === 'mutual' ? { auxZipfCoef: 1 / 32, auxKCoef: 1 / 32 } : {};
        // the initial weights of both runs (seed and first batch only)
        const t0 = new Trainer({ cfg: resolveConfig({ activation, k: 6, width: F, batchSize: B, steps, seed: 3 }), d, F, deadWindow: B });
        t0.init(data(1)[0]);
        const a = train(activation, createNativeKernels, extra);
        const b = train(activation, createReferenceKernels, extra);
        assert.deepEqual({ rowPtr: a.first.rowPtr, index: a.first.index }, { rowPtr: b.first.rowPtr, index: b.first.index }, `${activation} first-step selections`);
        expectClose(a.first.value, b.first.value, 1e-5, 1e-6, `${activation} first-step values`);
        expectClose(a.losses, b.losses, 1e-4, 1e-6, `${activation} losses`);
        for (const name of ['WencT', 'bEnc', 'Wdec', 'bDec']) {
          const mv = movement(a.params[name], b.params[name], t0.params[name]);
          assert.ok(mv < 0.02, `${activation} ${name}: relative movement difference ${mv}`);
        }
      });
    }

    it('kernelFactory and lmKernelFactory give the native kernels for "native" and "auto"', () => {
      assert.equal(kernelFactory('native')({ d: 2, F: 3, maxB: 1 }).name, 'native');
      assert.equal(kernelFactory('auto')({ d: 2, F: 3, maxB: 1 }).name, 'native');
      assert.equal(kernelFactory('reference')({ d: 2, F: 3, maxB: 1 }).name, 'reference');
      assert.equal(lmKernelFactory('native').name, 'native');
    });
  });
}
