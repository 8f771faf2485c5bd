/**
 * The host LM's ops (issue 8) on the native addon: `LmKernels` backed by build/sae_kernels.node
 * (native/lm_ops.cc). Linear layers run on the SAE encoder's packed SGEMM; the rest is
 * vectorised per row. Multithreaded on the addon's pool (SAE_THREADS) and bit-identical for any
 * thread count and from run to run; float32 with accumulations that stay within ~1e-6 relative of
 * the float64 reference (src/kernels/lm-reference.ts).
 */
import type { LmKernels } from './lm-types.js';
import { nativeAddon } from './native.js';

type LmHandle = object & { readonly __lm: unique symbol };

/** The LM half of the addon's surface (native/bindings_lm.cc). */
export interface LmAddon {
  lmCreate(isa: string | null): LmHandle;
  lmLinear(h: LmHandle, x: Float32Array, n: number, k: number, W: Float32Array, m: number, inOut: boolean, bias: Float32Array | null, y: Float32Array): void;
  lmLayerNorm(h: LmHandle, x: Float32Array, n: number, d: number, w: Float32Array, b: Float32Array, eps: number, y: Float32Array): void;
  lmGelu(h: LmHandle, x: Float32Array, n: number, erf: boolean): void;
  lmAdd(h: LmHandle, a: Float32Array, b: Float32Array, n: number): void;
  lmRotary(h: LmHandle, x: Float32Array, B: number, T: number, H: number, hd: number, dims: number, base: number): void;
  lmAttention(h: LmHandle, q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, H: number, hd: number, out: Float32Array, pattern: Float32Array | null): void;
  lmCrossEntropy(h: LmHandle, logits: Float32Array, n: number, V: number, targets: Int32Array, loss: Float32Array): void;
  lmKlDivergence(h: LmHandle, p: Float32Array, q: Float32Array, n: number, V: number, qBroadcast: boolean, out: Float32Array): void;
}

/** Native LM kernels with the best instruction set the CPU has. Throws when the addon is unavailable. */
export function createNativeLmKernels(): LmKernels {
  return createNativeLmKernelsWith(null);
}

/** Native LM kernels pinned to one instruction set ('avx512' | 'avx2' | 'sse2'; tests check each one). */
export function nativeLmKernelsFor(isa: string): LmKernels {
  return createNativeLmKernelsWith(isa);
}

function createNativeLmKernelsWith(isa: string | null): LmKernels {
  const A = nativeAddon() as unknown as LmAddon;
  const h = A.lmCreate(isa);
  return {
    name: isa ? `native-${isa}` : 'native',
    linear: (x, n, k, W, m, layout, bias, y) => A.lmLinear(h, x, n, k, W, m, layout === 'in_out', bias, y),
    layerNorm: (x, n, d, w, b, eps, y) => A.lmLayerNorm(h, x, n, d, w, b, eps, y),
    gelu: (x, n, kind) => A.lmGelu(h, x, n, kind === 'erf'),
    add: (a, b, n) => A.lmAdd(h, a, b, n),
    rotary: (x, B, T, H, hd, dims, base) => A.lmRotary(h, x, B, T, H, hd, dims, base),
    attention: (q, k, v, B, T, H, hd, out, pattern) => A.lmAttention(h, q, k, v, B, T, H, hd, out, pattern ?? null),
    crossEntropy: (logits, n, V, targets, loss) => A.lmCrossEntropy(h, logits, n, V, targets, loss),
    klDivergence: (p, q, n, V, qBroadcast, out) => A.lmKlDivergence(h, p, q, n, V, qBroadcast, out),
  };
}
