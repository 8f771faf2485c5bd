// Prints one SHA-256 over the outputs of native kernels on fixed inputs: the SAE kernels (encoder
// + four selections with an aux selection, decode, both backward passes, the optimizer) and/or
// every host-LM op, and the bf16 encoder and linear layer on every bf16 unit the process can run. The pool size is fixed per process, so the callers run this with several
// SAE_THREADS and require the same hash: work is split by fixed rules (tokens, features, rows,
// fixed chunks), so the thread count must not change a bit. Shapes are ragged (no multiple of a
// tile) and large enough to give every thread work; 'full' uses GPT-2-small shapes for the LM ops.
//
// Usage: SAE_THREADS=n node test/shared/kernel-hash.mjs ADDON full|emulated sae|lm|all
// (ADDON: the path of sae_kernels.node). Callers: test/native-kernels.test.ts,
// test/lm-kernels.test.ts and scripts/test-arm64.mjs.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';

const [addon, size, parts] = process.argv.slice(2);
const SIZES = {
  full: {
    sae: { d: 48, F: 700, B: 100, M: 500 },
    lm: { B: 2, T: 64, H: 12, hd: 64, rotary: 16, mlp: 3072, V: 50257, targets: [1, 50256, 777] },
  },
  emulated: {
    sae: { d: 37, F: 301, B: 43, M: 200 },
    lm: { B: 2, T: 70, H: 3, hd: 20, rotary: 6, mlp: 300, V: 1001, targets: [1, 1000, 777, 0, 5] },
  },
};
if (!addon || !SIZES[size] || !['sae', 'lm', 'all'].includes(parts)) {
  console.error('usage: node test/shared/kernel-hash.mjs ADDON full|emulated sae|lm|all');
  process.exit(2);
}

const A = createRequire(import.meta.url)(addon);
let s = 12345;
const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296) - 0.5;
const f = (n) => Float32Array.from({ length: n }, rnd);
const hash = createHash('sha256');
const put = (t) => hash.update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength));

if (parts !== 'lm') {
  const { d, F, B, M } = SIZES[size].sae;
  const W = f(F * d), Wd = f(F * d), bEnc = f(F), bDec = f(d), x = f(B * d);
  const h = A.create(d, F, B, null, null);
  const cap = new Int32Array(F).fill(3);
  for (const [kind, num, arr] of [[2, 5, null], [3, M, null], [4, 0, cap], [5, 0, null]]) {
    const xc = new Float32Array(B * d), rowPtr = new Int32Array(B + 1), index = new Int32Array(B * F), value = new Float32Array(B * F);
    const auxRp = new Int32Array(B + 1), auxIx = new Int32Array(B * F), auxV = new Float32Array(B * F);
    const mask = Uint8Array.from({ length: F }, (_, j) => (j % 3 === 0 ? 1 : 0));
    const r = A.encode(h, W, bEnc, bDec, x, B, xc, kind, num, arr, [mask], [7], [rowPtr, index, value, auxRp, auxIx, auxV]);
    const nnz = r[0];
    const out = new Float32Array(B * d);
    A.decode(h, Wd, bDec, rowPtr, index, value, B, out);
    const gW = new Float32Array(F * d), dz = new Float32Array(nnz);
    A.decodeBackward(h, Wd, rowPtr, index, value, B, out, gW, dz);
    const gE = new Float32Array(F * d), gBe = new Float32Array(F), gBd = new Float32Array(d);
    A.encoderBackward(h, W, xc, rowPtr, index, B, dz, gE, gBe, gBd);
    const m = new Float32Array(F * d), v = new Float32Array(F * d), p = Wd.slice();
    A.projectDecoderGrad(h, p, gW, F, d);
    const ss = A.sumSquares(h, gW);
    A.adamw(h, p, gW, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-5, 1, 1, true);
    A.normalizeDecoderRows(h, p, F, d);
    const P = [W.slice(), bEnc.slice(), Wd.slice(), bDec.slice()];
    const G = [gE.slice(), gBe.slice(), f(F * d), gBd.slice()];
    const Mo = P.map((t) => new Float32Array(t.length).fill(1e-4)), V = P.map((t) => new Float32Array(t.length).fill(1e-6));
    const norm = A.optimizerStep(h, P, G, Mo, V, F, d, 1e-3, 0.9, 0.999, 1e-8, 1e-5, 2, 0.01);
    for (const t of [...P, ...G, ...Mo, ...V]) put(t);
    put(new Float64Array([norm, ss]));
    for (const t of [xc, rowPtr, index.subarray(0, nnz), value.subarray(0, nnz), auxIx.subarray(0, r[2]), out, gW, dz, gE, gBe, gBd, p, m, v]) put(t);
  }
}

// bf16 (issue 18) on every unit this process can run: the encoder's selection and the LM's
// linear layers, whose pieces are claimed by whichever thread is free
// (stderr names them, for the callers to report which bf16 kernels ran)
console.error(`bf16 units: ${A.info().bf16Units.join(', ')}`);
for (const unit of A.info().bf16Units) {
  if (parts !== 'lm') {
    const { d, F, B } = SIZES[size].sae;
    const W = f(F * d), bEnc = f(F), bDec = f(d), x = f(B * d);
    const h = A.create(d, F, B, null, unit);
    const xc = new Float32Array(B * d), rowPtr = new Int32Array(B + 1), index = new Int32Array(B * F), value = new Float32Array(B * F);
    const r = A.encode(h, W, bEnc, bDec, x, B, xc, 2, 5, null, [], [], [rowPtr, index, value]);
    for (const t of [xc, rowPtr, index.subarray(0, r[0]), value.subarray(0, r[0])]) put(t);
  }
  if (parts !== 'sae') {
    const { B, T, H, hd, mlp } = SIZES[size].lm;
    const h = A.lmCreate(null, unit);
    const d = H * hd, n = B * T;
    const W = f(d * mlp);
    const Wp = unit === 'emulated' ? new Float32Array(A.lmPackedWLength(h, d, mlp)) : new Uint16Array(A.lmPackedWLength(h, d, mlp));
    A.lmPackBf16(h, W, d, mlp, true, Wp);
    const y = new Float32Array(n * mlp);
    A.lmLinearBf16(h, f(n * d), n, d, Wp, mlp, true, f(mlp), y);
    put(y);
  }
}

if (parts !== 'sae') {
  const { B, T, H, hd, rotary, mlp, V, targets } = SIZES[size].lm;
  const h = A.lmCreate(null, null);
  const d = H * hd, n = B * T;
  const x = f(n * d), qkv = new Float32Array(n * 3 * d);
  A.lmLinear(h, x, n, d, f(d * 3 * d), 3 * d, true, f(3 * d), qkv);
  put(qkv);
  const q = qkv.slice(0, n * d), k = qkv.slice(n * d, 2 * n * d), v = qkv.slice(2 * n * d);
  A.lmRotary(h, q, B, T, H, hd, rotary, 10000);
  put(q);
  const out = new Float32Array(n * d), pat = new Float32Array(B * H * T * T);
  A.lmAttention(h, q, k, v, B, T, H, hd, out, pat);
  put(out);
  put(pat);
  const up = new Float32Array(n * mlp);
  A.lmLinear(h, out, n, d, f(d * mlp), mlp, true, f(mlp), up);
  put(up);
  A.lmGelu(h, up, up.length, false);
  put(up);
  const down = new Float32Array(n * d);
  A.lmLinear(h, up, n, mlp, f(mlp * d), d, false, null, down);
  put(down);
  A.lmAdd(h, down, x, down.length);
  put(down);
  const ln = new Float32Array(n * d);
  A.lmLayerNorm(h, down, n, d, f(d), f(d), 1e-5, ln);
  put(ln);
  const rows = targets.length, logits = new Float32Array(rows * V);
  A.lmLinear(h, ln, rows, d, f(V * d), V, false, null, logits);
  put(logits);
  const loss = new Float32Array(rows);
  A.lmCrossEntropy(h, logits, rows, V, Int32Array.from(targets), loss);
  put(loss);
}

console.log(hash.digest('hex'));
