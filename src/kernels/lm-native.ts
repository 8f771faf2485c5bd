/**
 * The host LM's ops (issue 8) on the native addon: `LmKernels` backed by build/sae_kernels.node
 * (native/lm_ops.cc). Linear layers run on the SAE encoder's packed SGEMM; the rest is
 * vectorised per row. Multithreaded on the addon's pool (SAE_THREADS) and bit-identical for any
 * thread count and from run to run; float32 with accumulations that stay within ~1e-6 relative of
 * the float64 reference (src/kernels/lm-reference.ts).
 */
import type { LmKernels } from './lm-types.js';
import type { Precision } from './bf16.js';
import { nativeAddon, noteBf16Unit, type NativeOptions } from './native.js';

type LmHandle = object & { readonly __lm: unique symbol };

/** The LM half of the addon's surface (native/bindings_lm.cc). */
export interface LmAddon {
  lmCreate(isa: string | null, bf16Unit: string | null): LmHandle;
  lmBf16Unit(h: LmHandle): string | null;
  lmPackedWLength(h: LmHandle, k: number, m: number): number;
  lmPackBf16(h: LmHandle, W: Float32Array, k: number, m: number, inOut: boolean, out: Uint16Array | Float32Array): void;
  lmLinearBf16(h: LmHandle, x: Float32Array, n: number, k: number, W: Uint16Array | Float32Array, m: number, inOut: boolean, bias: Float32Array | null, y: Float32Array): void;
  lmLinear(h: LmHandle, x: Float32Array, n: number, k: number, W: Float32Array, m: number, inOut: boolean, bias: Float32Array | null, y: Float32Array): void;
  lmLayerNorm(h: LmHandle, x: Float32Array, n: number, d: number, w: Float32Array, b: Float32Array, eps: number, y: Float32Array): void;
  lmGelu(h: LmHandle, x: Float32Array, n: number, erf: boolean): void;
  lmAdd(h: LmHandle, a: Float32Array, b: Float32Array, n: number): void;
  lmRotary(h: LmHandle, x: Float32Array, B: number, T: number, H: number, hd: number, dims: number, base: number): void;
  lmAttention(h: LmHandle, q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, H: number, hd: number, out: Float32Array, pattern: Float32Array | null): void;
  lmCrossEntropy(h: LmHandle, logits: Float32Array, n: number, V: number, targets: Int32Array, loss: Float32Array): void;
  lmKlDivergence(h: LmHandle, p: Float32Array, q: Float32Array, n: number, V: number, qBroadcast: boolean, out: Float32Array): void;
}

/**
 * Native LM kernels with the best instruction set the CPU has, in fp32 or (precision bf16) on the
 * best bf16 unit. Throws when the addon is unavailable.
 */
export function createNativeLmKernels(opts: { precision?: Precision } = {}): LmKernels {
  return createNativeLmKernelsWith(null, opts);
}

/** Native LM kernels pinned to one instruction set ('avx512' | 'avx2' | 'sse2'; tests check each one) and bf16 unit. */
export function nativeLmKernelsFor(isa: string | null, opts: NativeOptions = {}): LmKernels {
  return createNativeLmKernelsWith(isa, opts);
}

/** A weight matrix as the bf16 GEMM reads it, with the shape it was packed for. */
interface PackedWeight {
  k: number;
  m: number;
  inOut: boolean;
  data: Uint16Array | Float32Array;
}

function createNativeLmKernelsWith(isa: string | null, opts: NativeOptions): LmKernels {
  const A = nativeAddon() as unknown as LmAddon;
  const precision = opts.precision ?? 'fp32';
  const h = A.lmCreate(isa, precision === 'bf16' ? (opts.bf16Unit ?? 'auto') : null);
  const unit = A.lmBf16Unit(h);
  if (unit) noteBf16Unit(unit);
  // Under bf16 each weight matrix is rounded and packed once, on first use, and kept as long as the
  // matrix lives (a WeakMap on the array itself, so a new model never meets an old model's
  // packing). The model's weights are constant once loaded; one changed in place afterwards would
  // keep its old packing.
  const packed = new WeakMap<Float32Array, PackedWeight>();
  const packOf = (W: Float32Array, k: number, m: number, inOut: boolean): PackedWeight => {
    const have = packed.get(W);
    if (have && have.k === k && have.m === m && have.inOut === inOut) return have;
    const len = A.lmPackedWLength(h, k, m);
    const data = unit === 'emulated' ? new Float32Array(len) : new Uint16Array(len);
    A.lmPackBf16(h, W, k, m, inOut, data);
    const p = { k, m, inOut, data };
    packed.set(W, p);
    return p;
  };
  const linear: LmKernels['linear'] = unit
    ? (x, n, k, W, m, layout, bias, y) => {
        const inOut = layout === 'in_out';
        if (W.length < k * m) throw new RangeError(`linear: W has ${W.length} values, want ${k}×${m}`);
        A.lmLinearBf16(h, x, n, k, packOf(W, k, m, inOut).data, m, inOut, bias, y);
      }
    : (x, n, k, W, m, layout, bias, y) => A.lmLinear(h, x, n, k, W, m, layout === 'in_out', bias, y);
  return {
    name: (isa ? `native-${isa}` : 'native') + (unit ? `-bf16-${unit}` : ''),
    precision,
    linear,
    layerNorm: (x, n, d, w, b, eps, y) => A.lmLayerNorm(h, x, n, d, w, b, eps, y),
    gelu: (x, n, kind) => A.lmGelu(h, x, n, kind === 'erf'),
    add: (a, b, n) => A.lmAdd(h, a, b, n),
    rotary: (x, B, T, H, hd, dims, base) => A.lmRotary(h, x, B, T, H, hd, dims, base),
    attention: (q, k, v, B, T, H, hd, out, pattern) => A.lmAttention(h, q, k, v, B, T, H, hd, out, pattern ?? null),
    crossEntropy: (logits, n, V, targets, loss) => A.lmCrossEntropy(h, logits, n, V, targets, loss),
    klDivergence: (p, q, n, V, qBroadcast, out) => A.lmKlDivergence(h, p, q, n, V, qBroadcast, out),
  };
}
