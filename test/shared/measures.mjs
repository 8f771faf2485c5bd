// Comparison measures of the kernel checks (test/shared/*-checks.mjs), plain JavaScript so that
// both vitest and Node's own runner under qemu (scripts/test-arm64.mjs) can load them.
import assert from 'node:assert/strict';

/** max |a − b| / (atol + rtol·|b|) must stay ≤ 1 (the SAE kernels' measure). */
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

/** |got − want| ≤ tol·scale(i) + atol everywhere (the LM ops' measure); reports the worst index. */
export function expectWithin(got, want, tol, scale = () => 1, atol = 0, what = '') {
  assert.equal(got.length, want.length, `${what}: lengths`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < got.length; i++) {
    const excess = Math.abs(got[i] - want[i]) - (tol * scale(i) + atol);
    if (!(excess <= worstExcess) || Number.isNaN(got[i])) {
      worst = i;
      worstExcess = Number.isNaN(got[i]) ? Infinity : excess;
    }
  }
  if (worst >= 0) assert.fail(`${what} element ${worst}: got ${got[worst]}, want ${want[worst]} (tolerance ${tol}·${scale(worst)} + ${atol})`);
}

export function sameBits(a, b) {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

export function normal(rng, n, scale = 1) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = scale * rng.normal();
  return a;
}
