import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { HookedTransformer } from '../src/lm/model.js';
import { readSafetensors } from '../src/util/safetensors.js';
import { lmKernelFactory } from '../src/kernels/index.js';
import { nativeAvailable as nativeLmAvailable } from '../src/kernels/native.js';

// The fixtures' references come from an independent implementation of Hugging Face's forward
// (fixtures/hf-tiny/*/README.md): every hook, logits, per-token losses, and splice losses.
const FIXTURES = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny');
const TOL = 1e-4;

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const kernelNames: Array<'reference' | 'native'> = ['reference', ...(nativeLmAvailable() ? (['native'] as const) : [])];

for (const [family, kernels] of (['gpt2', 'gpt-neox'] as const).flatMap((f) => kernelNames.map((k) => [f, k] as const))) {
  describe(`${family} fixture through the model-folder loader (${kernels} kernels)`, () => {
    let model: HookedTransformer;
    let ref: Record<string, Float32Array>;
    let ids: Int32Array;
    const B = 2;
    const T = 16;

    beforeAll(async () => {
      const dir = path.join(FIXTURES, family);
      model = await HookedTransformer.load(dir, lmKernelFactory(kernels));
      const f = await readSafetensors(path.join(dir, 'reference.safetensors'));
      ref = {};
      for (const [name, t] of Object.entries(f.tensors)) if (t.dtype === 'F32') ref[name] = t.data as Float32Array;
      ids = Int32Array.from(f.tensors.input_ids.data as BigInt64Array, (v) => Number(v));
    });

    it('matches every reference hook within 1e-4', () => {
      const hooks = Object.keys(ref).filter((n) => /hook_/.test(n) && !n.startsWith('splice.'));
      expect(hooks.length).toBeGreaterThan(10);
      const r = model.run(ids, B, T, { capture: hooks });
      for (const h of hooks) expect(maxAbsDiff(r.captured[h], ref[h]), h).toBeLessThan(TOL);
    });

    it('lists exactly the hooks the reference has, patterns included', () => {
      const refHooks = Object.keys(ref).filter((n) => /hook_/.test(n) && !n.startsWith('splice.')).sort();
      expect(model.hookNames().slice().sort()).toEqual(refHooks);
    });

    it('matches the reference logits and per-token losses', () => {
      const r = model.run(ids, B, T, { logits: true, loss: true });
      expect(maxAbsDiff(r.logits!, ref.logits)).toBeLessThan(TOL);
      expect(maxAbsDiff(r.lossPerToken!, ref.loss_per_token)).toBeLessThan(TOL);
      expect(Math.abs(r.loss! - ref.loss[0])).toBeLessThan(TOL);
    });

    it('computes the loss without materialising logits to the same values', () => {
      const a = model.run(ids, B, T, { loss: true });
      const b = model.run(ids, B, T, { loss: true, logits: true });
      expect(maxAbsDiff(a.lossPerToken!, b.lossPerToken!)).toBe(0);
    });

    for (const hook of ['blocks.1.hook_resid_pre', 'blocks.2.hook_resid_post']) {
      it(`reproduces the splice losses at ${hook} (zero, half, mean)`, () => {
        const clean = model.run(ids, B, T, { capture: [hook] }).captured[hook];
        const d = model.cfg.dModel;
        const mean = new Float32Array(d);
        for (let i = 0; i < B * T; i++) for (let j = 0; j < d; j++) mean[j] += clean[i * d + j] / (B * T);
        const kinds: Record<string, Float32Array | ((x: Float32Array) => void)> = {
          zero: new Float32Array(clean.length),
          half: (x) => {
            for (let i = 0; i < x.length; i++) x[i] *= 0.5;
          },
          mean: Float32Array.from({ length: clean.length }, (_, i) => mean[i % d]),
        };
        for (const [kind, rep] of Object.entries(kinds)) {
          const r = model.run(ids, B, T, { replace: { [hook]: rep }, loss: true });
          expect(maxAbsDiff(r.lossPerToken!, ref[`splice.${hook}.${kind}.loss_per_token`]), kind).toBeLessThan(TOL);
        }
      });
    }

    it('runs only the blocks a hook needs', () => {
      expect(model.run(ids, B, T, { capture: ['blocks.1.hook_resid_pre'] }).blocksRun).toBe(1);
      expect(model.run(ids, B, T, { capture: ['hook_embed'] }).blocksRun).toBe(0);
      expect(model.run(ids, B, T, { capture: ['blocks.1.hook_mlp_out'] }).blocksRun).toBe(2);
    });
  });
}
