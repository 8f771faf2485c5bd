/**
 * The native kernels (issue 3): `SaeKernels` backed by the Node-API addon built from native/*.cc
 * into build/sae_kernels.node by scripts/build-native.mjs. Float32 only: when any tensor of a call
 * is a Float64Array (the finite-difference gradient tests), the call goes to the reference kernels
 * instead, so the two implementations are interchangeable everywhere.
 *
 * Environment: SAE_THREADS (worker threads, default: the CPUs this process may use), SAE_ISA
 * (avx512 | avx2 | sse2, default: the best the CPU has), SAE_BF16 (amx | avx512bf16 | bfmmla | emulated:
 * the unit precision bf16 runs on, default: the best this process can run), SAE_NATIVE_DISABLE=1
 * (behave as if the addon were not built).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { FloatArray } from '../util/arrays.js';
import type { Precision } from './bf16.js';
import { ensureCapacity } from './selection.js';
import { createReferenceKernels } from './reference.js';
import { composedOptimizerStep } from './optimizer.js';
import { packageRoot } from '../util/package-root.js';
import type {
  AdamWHyper,
  AuxRequest,
  EncodeOutput,
  KernelFactory,
  KernelShape,
  OptimizerHyper,
  SaeKernels,
  SaeParams,
  Selection,
  SparseCodes,
} from './types.js';

/** Must equal kApiVersion in native/bindings_sae.cc. */
const API_VERSION = 4;

type Handle = object & { readonly __native: unique symbol };

/**
 * Where precision bf16 runs (docs/precision.md): 'amx' (TDPBF16PS tiles), 'avx512bf16'
 * (VDPBF16PS), 'bfmmla' (arm64 FEAT_BF16) or 'emulated' (operands rounded for the fp32 kernels: the same results class, fp32
 * speed); 'auto' = the best this process can run.
 */
export type Bf16Unit = 'auto' | 'amx' | 'avx512bf16' | 'bfmmla' | 'emulated';

interface AddonInfo {
  apiVersion: number;
  threads: number;
  isa: string;
  isas: string[];
  /** bf16 units this process can run with the best instruction set, best first (ends with 'emulated') */
  bf16Units: string[];
  bf16Unit: string;
  /** why AMX is not among them ('' when it is) */
  amxWhyNot: string;
}

/** The addon's surface (see native/bindings_sae.cc and native/bindings_lm.cc). */
interface Addon {
  info(): AddonInfo;
  create(d: number, F: number, maxB: number, isa: string | null, bf16Unit: string | null): Handle;
  bf16Unit(h: Handle): string | null;
  encode(
    h: Handle, WencT: Float32Array, bEnc: Float32Array, bDec: Float32Array, x: Float32Array, B: number, xc: Float32Array,
    kind: number, num: number, arr: Float32Array | Int32Array | null, auxMasks: Uint8Array[], auxKs: number[],
    outs: Array<Int32Array | Float32Array>,
  ): number[];
  selectDense(
    h: Handle, z: Float32Array, B: number, kind: number, num: number, arr: Float32Array | Int32Array | null,
    auxMasks: Uint8Array[], auxKs: number[], outs: Array<Int32Array | Float32Array>,
  ): number[];
  emit(h: Handle, which: number, rowPtr: Int32Array, index: Int32Array, value: Float32Array): number;
  decode(h: Handle, Wdec: Float32Array, bDec: Float32Array | null, rowPtr: Int32Array, index: Int32Array, value: Float32Array, B: number, out: Float32Array): void;
  decodeBackward(h: Handle, Wdec: Float32Array, rowPtr: Int32Array, index: Int32Array, value: Float32Array, B: number, dOut: Float32Array, gWdec: Float32Array, dz: Float32Array): void;
  encoderBackward(h: Handle, WencT: Float32Array, xc: Float32Array, rowPtr: Int32Array, index: Int32Array, B: number, dz: Float32Array, gWencT: Float32Array, gBenc: Float32Array, gBdec: Float32Array): void;
  sumSquares(h: Handle, a: Float32Array): number;
  adamw(h: Handle, p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, gradScale: number, decay: boolean): void;
  projectDecoderGrad(h: Handle, Wdec: Float32Array, gWdec: Float32Array, F: number, d: number): void;
  normalizeDecoderRows(h: Handle, Wdec: Float32Array, F: number, d: number): void;
  optimizerStep(
    h: Handle, params: Float32Array[], grads: Float32Array[], m: Float32Array[], v: Float32Array[], F: number, d: number,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, maxGradNorm: number,
  ): number;
}

/** Selection kinds as the addon numbers them (enum SelKind). */
const KIND = { none: 0, dense: 1, topk: 2, mutual: 3, feature: 4, relu: 5, jumprelu: 6, globalThreshold: 7 } as const;

let addon: Addon | null = null;
let loadError: string | null = null;
let loaded = false;

/** Where the addon is expected (build/sae_kernels.node under the package root). */
export function nativeAddonPath(): string {
  return path.join(packageRoot(), 'build', 'sae_kernels.node');
}

function load(): Addon | null {
  if (loaded) return addon;
  loaded = true;
  if (process.env.SAE_NATIVE_DISABLE === '1') {
    loadError = 'disabled by SAE_NATIVE_DISABLE=1';
    return null;
  }
  try {
    const file = nativeAddonPath();
    if (!existsSync(file)) {
      loadError = `${file} does not exist`;
      return null;
    }
    const mod = createRequire(import.meta.url)(file) as Addon;
    const v = typeof mod.info === 'function' ? mod.info().apiVersion : undefined;
    if (v !== API_VERSION) {
      loadError = `${file} is a stale build (API version ${v}, expected ${API_VERSION})`;
      return null;
    }
    addon = mod;
    warnIgnoredEnv(mod.info());
  } catch (e) {
    loadError = e instanceof Error ? e.message.split('\n')[0] : String(e);
  }
  return addon;
}

/**
 * SAE_ISA and SAE_THREADS are hints the addon drops when it cannot follow them (an instruction set
 * this CPU lacks, a count that is not 1..256); say so once on stderr rather than let a benchmark
 * or a test believe it ran what it asked for.
 */
function warnIgnoredEnv(info: AddonInfo): void {
  const isa = process.env.SAE_ISA;
  if (isa && isa !== info.isa) process.stderr.write(`sae: warning: SAE_ISA=${isa} ignored (this CPU offers ${info.isas.join(', ')}); using ${info.isa}\n`);
  const bf = process.env.SAE_BF16;
  if (bf && bf !== info.bf16Unit) process.stderr.write(`sae: warning: SAE_BF16=${bf} ignored (this process can run ${info.bf16Units.join(', ')}); bf16 uses ${info.bf16Unit}\n`);
  const t = process.env.SAE_THREADS;
  if (t && !(/^\d+$/.test(t) && Number(t) >= 1 && Number(t) <= 256)) process.stderr.write(`sae: warning: SAE_THREADS=${t} ignored (want 1..256); using ${info.threads} threads\n`);
}

/** True when build/sae_kernels.node exists, loads and matches this code. */
export function nativeAvailable(): boolean {
  return load() !== null;
}

/** Why the native kernels are unavailable (null when they are available). */
export function nativeLoadError(): string | null {
  load();
  return loadError;
}

/**
 * Threads, instruction set in use and those available, and the bf16 units (best first; the one
 * `auto` picks) with the reason AMX is not usable here (null when the addon is unavailable).
 */
export function nativeInfo(): { threads: number; isa: string; isas: string[]; bf16Unit: string; bf16Units: string[]; amxWhyNot: string } | null {
  const a = load();
  if (!a) return null;
  const { threads, isa, isas, bf16Unit, bf16Units, amxWhyNot } = a.info();
  return { threads, isa, isas, bf16Unit, bf16Units, amxWhyNot };
}

let bf16Noted = false;
/**
 * Once per process, on stderr, where bf16 does not run on a bf16 unit: no speed-up to expect
 * (emulated), or AMX refused by the operating system.
 */
export function noteBf16Unit(unit: string): void {
  if (bf16Noted) return;
  bf16Noted = true;
  const info = nativeInfo();
  if (unit === 'emulated') {
    process.stderr.write(`sae: bf16 runs emulated (no AMX, AVX512-BF16 or BFMMLA unit in use${info?.amxWhyNot ? `; AMX: ${info.amxWhyNot}` : ''}): operands are rounded for the fp32 kernels, bf16 results at fp32 speed\n`);
  } else if (unit !== 'amx' && info && /refused/.test(info.amxWhyNot)) {
    process.stderr.write(`sae: bf16: ${info.amxWhyNot}; using ${unit}\n`);
  }
}

function required(): Addon {
  const a = load();
  if (!a) throw new Error(`native kernels unavailable: ${loadError}; build them with \`node scripts/build-native.mjs\``);
  return a;
}

/** The loaded addon, for the LM ops (src/kernels/lm-native.ts); throws when it is unavailable. */
export function nativeAddon(): object {
  return required();
}

const isF32 = (a: unknown): a is Float32Array => a instanceof Float32Array;
const allF32 = (...xs: unknown[]): boolean => xs.every(isF32);
const paramsF32 = (p: SaeParams): boolean => allF32(p.WencT, p.bEnc, p.Wdec, p.bDec);
const codesF32 = (c: SparseCodes): boolean => isF32(c.value) && c.rowPtr instanceof Int32Array && c.index instanceof Int32Array;

function prepareRows(codes: SparseCodes, B: number): void {
  codes.B = B;
  if (codes.rowPtr.length < B + 1) codes.rowPtr = new Int32Array(B + 1);
}

/** Native kernels with the default instruction set, in fp32. */
export const createNativeKernels: KernelFactory = (shape: KernelShape) => createNativeKernelsWith(shape, null, 'fp32', 'auto');

/** Options of nativeKernelsFor: the precision (default fp32) and, under bf16, its unit (default auto). */
export interface NativeOptions {
  precision?: Precision;
  bf16Unit?: Bf16Unit;
}

/**
 * A factory pinned to one instruction set ('avx512' | 'avx2' | 'sse2'; null = the best; tests
 * check each one), optionally in bf16 on a given unit.
 */
export function nativeKernelsFor(isa: string | null, opts: NativeOptions = {}): KernelFactory {
  return (shape) => createNativeKernelsWith(shape, isa, opts.precision ?? 'fp32', opts.bf16Unit ?? 'auto');
}

function createNativeKernelsWith(shape: KernelShape, isa: string | null, precision: Precision, unit: Bf16Unit): SaeKernels {
  const A = required();
  const { d, F, maxB } = shape;
  const bf16 = precision === 'bf16';
  const h = A.create(d, F, maxB, isa, bf16 ? unit : null);
  const unitName = A.bf16Unit(h);
  if (unitName) noteBf16Unit(unitName);
  let ref: SaeKernels | null = null;
  // the reference follows the same precision rule, so a float64 or odd call gets the same class of result
  const reference = (): SaeKernels => (ref ??= createReferenceKernels(shape, { precision }));

  function selectionArgs(sel: Selection): [number, number, Float32Array | Int32Array | null] | null {
    switch (sel.kind) {
      case 'relu':
        return [KIND.relu, 0, null];
      case 'topk':
        return [KIND.topk, sel.k, null];
      case 'mutual':
        return [KIND.mutual, sel.M, null];
      case 'feature':
        return [KIND.feature, 0, sel.capacity];
      case 'jumprelu':
        return isF32(sel.threshold) ? [KIND.jumprelu, 0, sel.threshold] : null;
      case 'globalThreshold':
        return [KIND.globalThreshold, sel.threshold, null];
      default:
        return null;
    }
  }

  /** Hand the addon's results to the SparseCodes, growing arrays that were too small. */
  function collect(res: number[], codes: SparseCodes[], B: number): void {
    for (let o = 0; o < codes.length; o++) {
      const c = codes[o];
      const nnz = res[2 * o];
      c.B = B;
      c.nnz = nnz;
      if (res[2 * o + 1] !== 1) {
        ensureCapacity(c, nnz);
        A.emit(h, o, c.rowPtr, c.index, c.value as Float32Array);
      }
    }
  }

  function outsOf(codes: SparseCodes[]): Array<Int32Array | Float32Array> {
    const outs: Array<Int32Array | Float32Array> = [];
    for (const c of codes) outs.push(c.rowPtr, c.index, c.value as Float32Array);
    return outs;
  }

  const kernels: SaeKernels & NativeExtras = {
    name: (isa ? `native-${isa}` : 'native') + (unitName ? `-bf16-${unitName}` : ''),
    precision,

    encodeSelect(p: SaeParams, x: FloatArray, B: number, sel: Selection, aux: readonly AuxRequest[], out: EncodeOutput): void {
      const args = selectionArgs(sel);
      const outCodes = [out.codes, ...out.aux.slice(0, aux.length)];
      if (!args || !paramsF32(p) || !allF32(x, out.xc) || !outCodes.every(codesF32) || out.aux.length < aux.length) {
        reference().encodeSelect(p, x, B, sel, aux, out);
        return;
      }
      for (const c of outCodes) prepareRows(c, B);
      const res = A.encode(
        h, p.WencT as Float32Array, p.bEnc as Float32Array, p.bDec as Float32Array, x as Float32Array, B, out.xc as Float32Array,
        args[0], args[1], args[2], aux.map((a) => a.mask), aux.map((a) => a.k), outsOf(outCodes),
      );
      collect(res, outCodes, B);
    },

    decode(p: SaeParams, codes: SparseCodes, out: FloatArray, withBias: boolean): void {
      if (!paramsF32(p) || !codesF32(codes) || !isF32(out)) return reference().decode(p, codes, out, withBias);
      A.decode(h, p.Wdec as Float32Array, withBias ? (p.bDec as Float32Array) : null, codes.rowPtr, codes.index, codes.value as Float32Array, codes.B, out);
    },

    decodeBackward(p: SaeParams, codes: SparseCodes, dOut: FloatArray, gWdec: FloatArray, dz: FloatArray): void {
      if (!paramsF32(p) || !codesF32(codes) || !allF32(dOut, gWdec, dz)) return reference().decodeBackward(p, codes, dOut, gWdec, dz);
      A.decodeBackward(h, p.Wdec as Float32Array, codes.rowPtr, codes.index, codes.value as Float32Array, codes.B, dOut as Float32Array, gWdec as Float32Array, dz as Float32Array);
    },

    encoderBackward(p: SaeParams, xc: FloatArray, codes: SparseCodes, dz: FloatArray, g: SaeParams): void {
      if (!paramsF32(p) || !paramsF32(g) || !codesF32(codes) || !allF32(xc, dz)) return reference().encoderBackward(p, xc, codes, dz, g);
      A.encoderBackward(h, p.WencT as Float32Array, xc as Float32Array, codes.rowPtr, codes.index, codes.B, dz as Float32Array, g.WencT as Float32Array, g.bEnc as Float32Array, g.bDec as Float32Array);
    },

    sumSquares(a: FloatArray): number {
      return isF32(a) ? A.sumSquares(h, a) : reference().sumSquares(a);
    },

    adamw(param: FloatArray, grad: FloatArray, m: FloatArray, v: FloatArray, hp: AdamWHyper, decay: boolean): void {
      if (!allF32(param, grad, m, v)) return reference().adamw(param, grad, m, v, hp, decay);
      A.adamw(h, param as Float32Array, grad as Float32Array, m as Float32Array, v as Float32Array, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weightDecay, hp.step, hp.gradScale, decay);
    },

    projectDecoderGrad(Wdec: FloatArray, gWdec: FloatArray, Fr: number, dr: number): void {
      if (!allF32(Wdec, gWdec)) return reference().projectDecoderGrad(Wdec, gWdec, Fr, dr);
      A.projectDecoderGrad(h, Wdec as Float32Array, gWdec as Float32Array, Fr, dr);
    },

    normalizeDecoderRows(Wdec: FloatArray, Fr: number, dr: number): void {
      if (!isF32(Wdec)) return reference().normalizeDecoderRows(Wdec, Fr, dr);
      A.normalizeDecoderRows(h, Wdec, Fr, dr);
    },

    optimizerStep(p: SaeParams, g: SaeParams, m: readonly FloatArray[], v: readonly FloatArray[], hp: OptimizerHyper): number {
      // Fused: two passes over memory instead of the primitives' six (see native/optimizer.cc).
      if (!paramsF32(p) || !paramsF32(g) || m.length !== 4 || v.length !== 4 || !allF32(...m, ...v)) {
        return composedOptimizerStep(kernels, p, g, m, v, hp);
      }
      return A.optimizerStep(
        h, [p.WencT, p.bEnc, p.Wdec, p.bDec] as Float32Array[], [g.WencT, g.bEnc, g.Wdec, g.bDec] as Float32Array[],
        m as Float32Array[], v as Float32Array[], p.F, p.d,
        hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weightDecay, hp.step, hp.maxGradNorm,
      );
    },

    affinities(p: SaeParams, x: Float32Array, B: number, xc: Float32Array, out: Float32Array | null): void {
      if (!paramsF32(p)) throw new TypeError('affinities: float32 parameters only');
      A.encode(h, p.WencT as Float32Array, p.bEnc as Float32Array, p.bDec as Float32Array, x, B, xc, out ? KIND.dense : KIND.none, 0, out, [], [], []);
    },

    selectFrom(z: Float32Array, B: number, sel: Selection, aux: readonly AuxRequest[], codes: SparseCodes, auxCodes: SparseCodes[]): void {
      const args = selectionArgs(sel);
      if (!args) throw new TypeError('selectFrom: float32 thresholds only');
      const outCodes = [codes, ...auxCodes.slice(0, aux.length)];
      for (const c of outCodes) prepareRows(c, B);
      const res = A.selectDense(h, z, B, args[0], args[1], args[2], aux.map((a) => a.mask), aux.map((a) => a.k), outsOf(outCodes));
      collect(res, outCodes, B);
    },
  };
  return kernels;
}

/** Extra entry points of the native kernels, for tests and benchmarks (not part of SaeKernels). */
export interface NativeExtras {
  /**
   * The encoder alone: xc = x − b_dec and z' = xc·W_enc + b_enc with the same GEMM as
   * encodeSelect, written densely to `out` (B×F), or computed and dropped when `out` is null
   * (the GEMM floor of a training step).
   */
  affinities(p: SaeParams, x: Float32Array, B: number, xc: Float32Array, out: Float32Array | null): void;
  /** The selection stage of encodeSelect on given affinities z' (B×F), e.g. with ties on purpose. */
  selectFrom(z: Float32Array, B: number, sel: Selection, aux: readonly AuxRequest[], codes: SparseCodes, auxCodes: SparseCodes[]): void;
}

/** Narrow a SaeKernels made by createNativeKernels / nativeKernelsFor to its extra entry points. */
export function nativeExtras(k: SaeKernels): NativeExtras {
  const e = k as Partial<NativeExtras>;
  if (typeof e.affinities !== 'function' || typeof e.selectFrom !== 'function') throw new TypeError(`${k.name} kernels are not native`);
  return e as NativeExtras;
}
