import type { KernelFactory } from './types.js';
import { createReferenceKernels } from './reference.js';
import { createNativeKernels, nativeAvailable, nativeLoadError } from './native.js';
import { UserError } from '../util/errors.js';

export type KernelName = 'auto' | 'reference' | 'native';

/** auto = the native kernels when they were built, else the reference kernels. */
export function kernelFactory(name: KernelName): KernelFactory {
  switch (name) {
    case 'reference':
      return createReferenceKernels;
    case 'native':
      if (!nativeAvailable()) throw new UserError(`native kernels unavailable (${nativeLoadError()}); build them with \`npm run build:native\``);
      return createNativeKernels;
    case 'auto':
      return nativeAvailable() ? createNativeKernels : createReferenceKernels;
    default:
      throw new UserError(`unknown kernels "${String(name)}" (auto, reference or native)`);
  }
}
