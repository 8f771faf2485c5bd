// Shared by the emulated kernel tests (test/emulated/*.test.mjs): plain JavaScript for Node's own
// test runner, because vitest and esbuild have no arm64 binaries in this checkout's node_modules.
// They import the compiled package (dist/) two directories up, so scripts/test-arm64.mjs can stage
// dist/ with the cross-built addon and run them under qemu; `node test/emulated/x.test.mjs` runs
// them on the host against build/sae_kernels.node. The problem generators mirror those of
// test/native-kernels.test.ts and test/lm-kernels.test.ts.
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const imp = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);

const { allocParams, tensors } = await imp('kernels/params.js');
const { allocCodes } = await imp('kernels/selection.js');
export const { Rng } = await imp('util/rng.js');
export { allocParams, tensors, allocCodes };

/** Integer-valued data (|z'| ≪ 2^24): float32 and float64 sums are exact, so z' is identical on
 * both sides and even exact ties must be broken the same way. */
export function exactProblem(rng, d, F, B) {
  const p = allocParams(d, F);
  for (let i = 0; i < p.WencT.length; i++) p.WencT[i] = rng.int(7) - 3;
  for (let i = 0; i < p.Wdec.length; i++) p.Wdec[i] = rng.int(5) - 2;
  for (let j = 0; j < F; j++) p.bEnc[j] = rng.int(9) - 3;
  for (let i = 0; i < d; i++) p.bDec[i] = rng.int(3) - 1;
  const x = new Float32Array(B * d);
  for (let i = 0; i < x.length; i++) x[i] = rng.int(5) - 2;
  return { p, x };
}

export function randomProblem(rng, d, F, B) {
  const p = allocParams(d, F);
  for (const t of tensors(p)) for (let i = 0; i < t.length; i++) t[i] = rng.normal() / Math.sqrt(d);
  for (let j = 0; j < F; j++) p.bEnc[j] = 0.05 * rng.normal();
  const x = new Float32Array(B * d);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal();
  return { p, x };
}

export function randomMask(rng, F, frac) {
  const m = new Uint8Array(F);
  for (let j = 0; j < F; j++) m[j] = rng.next() < frac ? 1 : 0;
  return m;
}

export function output(B, d, nAux, capacity = 4) {
  const aux = [];
  for (let a = 0; a < nAux; a++) aux.push(allocCodes(B, capacity));
  return { xc: new Float32Array(B * d), codes: allocCodes(B, capacity), aux };
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

/** Every selection kind, with capacities and thresholds that make ties and empty rows likely. */
export function selections(rng, B, F) {
  const cap = new Int32Array(F);
  for (let j = 0; j < F; j++) cap[j] = [0, 1, 2, 3, 7, B, B + 5][rng.int(7)];
  const thr = new Float32Array(F);
  for (let j = 0; j < F; j++) thr[j] = rng.int(5) - 1;
  return [
    { kind: 'topk', k: 3 },
    { kind: 'topk', k: 1 },
    { kind: 'topk', k: F + 3 },
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

export function auxRequests(rng, F) {
  return [
    { mask: randomMask(rng, F, 0.3), k: 2 },
    { mask: randomMask(rng, F, 0.7), k: F },
  ];
}

/** max |a − b| / (atol + rtol·|b|) must stay ≤ 1 (the measure of test/native-kernels.test.ts). */
export function expectClose(a, b, rtol, atol, what) {
  assert.equal(a.length, b.length, `${what}: lengths`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const r = Math.abs(a[i] - b[i]) / (atol + rtol * Math.abs(b[i]));
    if (!(r <= worst)) {
      worst = r;
      at = i;
    }
  }
  assert.ok(worst <= 1, `${what}: worst at ${at}: ${a[at]} vs ${b[at]} (${worst.toFixed(2)}× the tolerance)`);
}

/** |got − want| ≤ tol·scale(i) + atol everywhere (the measure of test/lm-kernels.test.ts). */
export function expectWithin(got, want, tol, scale = () => 1, atol = 0, what = '') {
  assert.equal(got.length, want.length, `${what}: lengths`);
  for (let i = 0; i < got.length; i++) {
    const excess = Math.abs(got[i] - want[i]) - (tol * scale(i) + atol);
    if (!(excess <= 0)) assert.fail(`${what} element ${i}: got ${got[i]}, want ${want[i]} (tolerance ${tol}·${scale(i)} + ${atol})`);
  }
}

export function sameBits(a, b) {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

export function cloneParams(p) {
  return { d: p.d, F: p.F, WencT: p.WencT.slice(), bEnc: p.bEnc.slice(), Wdec: p.Wdec.slice(), bDec: p.bDec.slice() };
}

export function normal(rng, n, scale = 1) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = scale * rng.normal();
  return a;
}

/** The native addon must be there: these tests exist to exercise it, never to skip. */
export async function requireNative() {
  const native = await imp('kernels/native.js');
  assert.equal(native.nativeLoadError(), null, 'the native addon must load');
  const info = native.nativeInfo();
  const want = process.env.SAE_EXPECT_ISA;
  if (want) assert.equal(info.isa, want, `instruction set in use (SAE_EXPECT_ISA=${want})`);
  return { native, info };
}
