import { describe, expect, it } from 'vitest';
import { ShuffledWindow } from '../src/stream/window.js';
import { Rng } from '../src/util/rng.js';

describe('ShuffledWindow', () => {
  it('serves the filled rows in the order of the permutation drawn from its Rng, and the same order again from the same Rng', () => {
    const d = 3;
    const w = new ShuffledWindow(8, d);
    for (let i = 0; i < 5 * d; i++) w.rows[i] = Math.floor(i / d);
    w.shuffle(5, Rng.derive(7, 'window/0/0'));
    const want = Rng.derive(7, 'window/0/0').shuffle(Uint32Array.from([0, 1, 2, 3, 4]));
    const out = new Float32Array(6 * d);
    // a batch spanning the window's end takes what is left
    expect(w.serve(0, 2, out, 0)).toBe(2);
    expect(w.serve(2, 4, out, 2)).toBe(3);
    expect(Array.from({ length: 5 }, (_, r) => out[r * d])).toEqual(Array.from(want));
    expect(Array.from(out.subarray(0, 5 * d))).toEqual(Array.from(want).flatMap((r) => [r, r, r]));
  });
});
