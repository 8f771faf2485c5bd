import type { KernelFactory } from './types.js';
import type { LmKernels } from './lm-types.js';
import { createReferenceLmKernels } from './lm-reference.js';
import { createNativeLmKernels } from './lm-native.js';
import { createReferenceKernels } from './reference.js';
import { createNativeKernels, nativeAvailable, nativeKernelsFor, nativeLoadError } from './native.js';
import { cudaStatus } from './cuda.js';
import type { Precision } from './bf16.js';
import { UserError } from '../util/errors.js';

export type KernelName = 'auto' | 'reference' | 'native' | 'cuda';

export const KERNEL_NAMES: readonly KernelName[] = ['auto', 'reference', 'native', 'cuda'];

/** `--kernels cuda` where the CUDA backend cannot run: one line saying what is missing. */
export function cudaUnavailable(): UserError {
  return new UserError(`--kernels cuda: ${cudaStatus().reason}; use --kernels native or reference`);
}

/**
 * The kernels for a name: 'reference' = plain TypeScript loops (the oracle), 'native' = the C++
 * addon (build/sae_kernels.node; float32, multithreaded), 'auto' = native when it was built and
 * loads, else reference. 'cuda' has no host kernels of its own yet: it fails with the reason the
 * CUDA backend is unavailable (issue 12 part 2 decides what evaluation runs on beside it).
 * `precision` (docs/precision.md): 'fp32', the default, changes nothing; 'bf16' rounds the encoder
 * GEMM's operands to bf16 and sums in fp32 — natively on AMX or AVX512-BF16 where the CPU has them
 * (SAE_BF16 picks), elsewhere on the fp32 kernels with rounded operands (said once on stderr).
 */
export function kernelFactory(name: KernelName, precision: Precision = 'fp32'): KernelFactory {
  const reference: KernelFactory = precision === 'fp32' ? createReferenceKernels : (shape) => createReferenceKernels(shape, { precision });
  const native: KernelFactory = precision === 'fp32' ? createNativeKernels : nativeKernelsFor(null, { precision });
  switch (name) {
    case 'reference':
      return reference;
    case 'native':
      if (!nativeAvailable()) {
        throw new UserError(nativeUnavailableMessage());
      }
      return native;
    case 'auto':
      return nativeAvailable() ? native : reference;
    case 'cuda':
      throw cudaUnavailable();
    default:
      throw new UserError(`unknown kernels "${String(name)}" (auto, reference, native or cuda)`);
  }
}

/**
 * The host LM's kernels for a name, with kernelFactory's semantics: 'reference' = the float64
 * TypeScript oracle, 'native' = the addon's LM ops (float32, multithreaded), 'auto' = native when
 * the addon was built and loads, else reference. `precision` as for kernelFactory.
 */
export function lmKernelFactory(name: KernelName, precision: Precision = 'fp32'): LmKernels {
  switch (name) {
    case 'reference':
      return createReferenceLmKernels({ precision });
    case 'native':
      if (!nativeAvailable()) {
        throw new UserError(nativeUnavailableMessage());
      }
      return createNativeLmKernels({ precision });
    case 'auto':
      return nativeAvailable() ? createNativeLmKernels({ precision }) : createReferenceLmKernels({ precision });
    case 'cuda':
      throw cudaUnavailable();
    default:
      throw new UserError(`unknown kernels "${String(name)}" (auto, reference, native or cuda)`);
  }
}

/** One line for a missing addon: why it did not load, and how to build it on this platform. */
function nativeUnavailableMessage(): string {
  const compiler = process.platform === 'darwin' ? "Apple clang (Xcode's command line tools)" : process.platform === 'win32' ? 'Linux or WSL2: Windows has no native build' : 'g++ or clang++';
  return `native kernels unavailable (${nativeLoadError()}); build them with \`node scripts/build-native.mjs\` (needs ${compiler} and Node's headers), or use --kernels reference`;
}
