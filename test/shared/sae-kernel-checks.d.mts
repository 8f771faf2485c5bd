// Types of sae-kernel-checks.mjs for the vitest files: the kernel modules go in untyped (the
// checks run against src/ here and dist/ under qemu).
import type { EncodeOutput, SaeParams, SparseCodes } from '../../src/kernels/types.js';
import type { Rng } from '../../src/util/rng.js';

export interface TestApi {
  describe(name: string, fn: () => void): void;
  it(name: string, fn: () => void): void;
}
export type Size = 'full' | 'emulated';
type Modules = Record<string, any>;

export function codesOf(c: SparseCodes): { B: number; nnz: number; rowPtr: number[]; index: number[]; value: number[] };
export function cloneParams(p: SaeParams): SaeParams;
export function saeProblems(m: Modules): {
  randomProblem(rng: Rng, d: number, F: number, B: number): { p: SaeParams; x: Float32Array };
  output(B: number, d: number, nAux: number, capacity?: number): EncodeOutput;
};
export function defineSaeKernelChecks(t: TestApi, m: Modules, isas: readonly string[], size: Size): void;
export function defineTrainerChecks(t: TestApi, m: Modules, size: Size): void;
