import type { KernelFactory } from './types.js';
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
