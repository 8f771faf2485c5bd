import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createReferenceLmKernels } from '../src/kernels/lm-reference.js';
import { createNativeLmKernels, nativeLmKernelsFor } from '../src/kernels/lm-native.js';
import { nativeAddonPath, nativeAvailable, nativeInfo, nativeLoadError } from '../src/kernels/native.js';
import { lmKernelFactory } from '../src/kernels/index.js';
import { Rng } from '../src/util/rng.js';
import { defineLmKernelChecks } from './shared/lm-kernel-checks.mjs';

// The host LM's native ops (issue 8) against the float64 reference. The checks shared with the
// emulated arm64 run (scripts/test-arm64.mjs) are in test/shared/lm-kernel-checks.mjs, here at
// GPT-2-small and Pythia-70m sizes; what follows them is for this host only.

const available = nativeAvailable();
const isas = available ? nativeInfo()!.isas : [];
// Where the native build is required (CI), a missing addon fails here instead of skipping below.
const required = process.env.SAE_REQUIRE_NATIVE === '1';
const skip = !available && !required;
if (skip) console.warn(`native LM kernel tests skipped: ${nativeLoadError()}`);

describe('the native LM kernels', () => {
  it.runIf(required)('load wherever SAE_REQUIRE_NATIVE=1 demands it', () => {
    expect(nativeLoadError()).toBeNull();
  });
});

defineLmKernelChecks({ describe: describe.skipIf(skip), it }, { Rng, createReferenceLmKernels, createNativeLmKernels, nativeLmKernelsFor }, isas, 'full');

describe.skipIf(skip)('native LM ops on this host', () => {
  it('give the same results with one thread as with the default pool (and with three), at GPT-2 shapes', () => {
    // the pool size is fixed per process: hash the same computation in child processes
    const run = (threads: string | undefined) => {
      const env = { ...process.env };
      if (threads) env.SAE_THREADS = threads;
      else delete env.SAE_THREADS;
      const r = spawnSync(process.execPath, [path.join(__dirname, 'shared', 'kernel-hash.mjs'), nativeAddonPath(), 'full', 'lm'], { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.trim();
    };
    const base = run(undefined);
    expect(base).toMatch(/^[0-9a-f]{64}$/);
    expect(run('1')).toBe(base);
    expect(run('3')).toBe(base);
  });
});

// ---------------------------------------------------------------------------------- factory

describe('lmKernelFactory', () => {
  it('"reference" gives the reference LM kernels', () => {
    expect(lmKernelFactory('reference').name).toBe('reference');
  });

  it.skipIf(skip)('"native" and "auto" give the native LM kernels', () => {
    expect(lmKernelFactory('native').name).toBe('native');
    expect(lmKernelFactory('auto').name).toBe('native');
  });

  it('rejects unknown names like kernelFactory does', () => {
    expect(() => lmKernelFactory('gpu' as never)).toThrow(/unknown kernels "gpu" \(auto, reference, native or cuda\)/);
  });
});
