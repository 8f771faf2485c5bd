// Types of measures.mjs for the vitest files.
export function expectClose(a: ArrayLike<number>, b: ArrayLike<number>, rtol: number, atol: number, what: string): void;
export function expectWithin(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, scale?: (i: number) => number, atol?: number, what?: string): void;
export function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean;
export function normal(rng: { normal(): number }, n: number, scale?: number): Float32Array;
