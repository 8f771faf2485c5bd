import type { KernelFactory } from './types.js';
import type { LmKernels } from './lm-types.js';
import { createReferenceLmKernels } from './lm-reference.js';
import { createNativeLmKernels } from './lm-native.js';
import { createReferenceKernels } from './reference.js';
import { createNativeKernels, nativeAvailable, nativeLoadError } from './native.js';
import { UserError } from '../util/errors.js';

export type KernelName = 'auto' | 'reference' | 'native';

export const KERNEL_NAMES: readonly KernelName[] = ['auto', 'reference', 'native'];

/**
 * The kernels for a name: 'reference' = plain TypeScript loops (the oracle), 'native' = the C++
 * addon (build/sae_kernels.node; float32, multithreaded), 'auto' = native when it was built and
 * loads, else reference.
 */
export function kernelFactory(name: KernelName): KernelFactory {
  switch (name) {
    case 'reference':
      return createReferenceKernels;
    case 'native':
      if (!nativeAvailable()) {
        throw new UserError(`native kernels unavailable (${nativeLoadError()}); build them with \`node scripts/build-native.mjs\` (needs g++ and Node's headers), or use --kernels reference`);
      }
      return createNativeKernels;
    case 'auto':
      return nativeAvailable() ? createNativeKernels : createReferenceKernels;
    default:
      throw new UserError(`unknown kernels "${String(name)}" (auto, reference or native)`);
  }
}

/**
 * The host LM's kernels for a name, with kernelFactory's semantics: 'reference' = the float64
 * TypeScript oracle, 'native' = the addon's LM ops (float32, multithreaded), 'auto' = native when
 * the addon was built and loads, else reference.
 */
export function lmKernelFactory(name: KernelName): LmKernels {
  switch (name) {
    case 'reference':
      return createReferenceLmKernels();
    case 'native':
      if (!nativeAvailable()) {
        throw new UserError(`native kernels unavailable (${nativeLoadError()}); build them with \`node scripts/build-native.mjs\` (needs g++ and Node's headers), or use --kernels reference`);
      }
      return createNativeLmKernels();
    case 'auto':
      return nativeAvailable() ? createNativeLmKernels() : createReferenceLmKernels();
    default:
      throw new UserError(`unknown kernels "${String(name)}" (auto, reference or native)`);
  }
}
