// Short training runs with the native kernels against the same runs with the reference kernels,
// for Node's test runner (see helpers.mjs): the first step selects the same features, the losses of
// every step agree, and the weights move the same way (as in test/native-kernels.test.ts: Adam
// turns gradient elements that are zero up to rounding into steps of any size up to lr, so the
// movement is compared as a whole). Run: node test/emulated/train.test.mjs
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { codesOf, expectClose, imp, requireNative, Rng } from './helpers.mjs';

const { native } = await requireNative();
const { createNativeKernels } = native;
const { createReferenceKernels } = await imp('kernels/reference.js');
const { kernelFactory, lmKernelFactory } = await imp('kernels/index.js');
const { resolveConfig } = await imp('sae/config.js');
const { Trainer } = await imp('sae/trainer.js');

// d and F not multiples of the 8 × 8 NEON tile; B not a multiple of the 8 tokens of a panel
const d = 30, F = 123, B = 90;
const steps = 5;

function data(n) {
  const rng = new Rng(21);
  return Array.from({ length: n }, () => new Float32Array(B * d).map(() => rng.normal()));
}

function train(activation, kernels, extra) {
  const cfg = resolveConfig({ activation, k: 6, width: F, batchSize: B, steps, seed: 3, rankInterval: 2, lr: 2e-3, auxK: 16, ...extra });
  const t = new Trainer({ cfg, d, F, deadWindow: B, kernels });
  const xs = data(steps);
  t.init(xs[0]);
  const losses = [];
  let first = null;
  for (const x of xs) {
    losses.push(t.trainStep(x).total);
    // the trainer's workspace is private in TypeScript; read the first step's codes for the check
    if (!first) first = codesOf(t.ws.enc.codes);
  }
  return { params: t.params, losses, first };
}

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
      const t0 = new Trainer({ cfg: resolveConfig({ activation, k: 6, width: F, batchSize: B, steps, seed: 3 }), d, F, deadWindow: B });
      t0.init(data(1)[0]);
      const a = train(activation, createNativeKernels, extra);
      const b = train(activation, createReferenceKernels, extra);
      assert.deepEqual({ rowPtr: a.first.rowPtr, index: a.first.index }, { rowPtr: b.first.rowPtr, index: b.first.index }, `${activation} first-step selections`);
      expectClose(a.first.value, b.first.value, 1e-5, 1e-6, `${activation} first-step values`);
      expectClose(a.losses, b.losses, 1e-4, 1e-6, `${activation} losses`);
      for (const name of ['WencT', 'bEnc', 'Wdec', 'bDec']) {
        const m = movement(a.params[name], b.params[name], t0.params[name]);
        assert.ok(m < 0.02, `${activation} ${name}: relative movement difference ${m}`);
      }
    });
  }

  it('kernelFactory and lmKernelFactory give the native kernels for "native" and "auto"', () => {
    assert.equal(kernelFactory('native')({ d: 2, F: 3, maxB: 1 }).name, 'native');
    assert.equal(kernelFactory('auto')({ d: 2, F: 3, maxB: 1 }).name, 'native');
    assert.equal(lmKernelFactory('native').name, 'native');
  });
});
