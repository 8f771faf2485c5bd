import type { Rng } from '../util/rng.js';

/**
 * A shuffle window (SPEC §1): up to `capacity` rows held in memory and served in the order of a
 * seeded permutation, so that batches cut from consecutive windows mix rows that arrived near each
 * other. The sources fill `rows` (from shards, or from the LM), then fix the order with shuffle();
 * because the permutation depends only on the Rng it is drawn from, a resumed source regenerates
 * the same order by refilling the window and deriving the same Rng.
 */
export class ShuffledWindow {
  /** the rows as filled [capacity × d]; the order they are served in is the permutation's */
  readonly rows: Float32Array;
  // Allocated once: first touch of fresh memory is slow on the target VMs.
  private readonly perm: Uint32Array;
  /** rows in the window (set by shuffle) */
  length = 0;

  constructor(
    readonly capacity: number,
    readonly d: number,
  ) {
    this.rows = new Float32Array(capacity * d);
    this.perm = new Uint32Array(capacity);
  }

  /** Take the first n filled rows as the window, in the order of a permutation drawn from rng. */
  shuffle(n: number, rng: Rng): void {
    for (let i = 0; i < n; i++) this.perm[i] = i;
    rng.shuffle(this.perm.subarray(0, n));
    this.length = n;
  }

  /**
   * Copy up to `want` rows of the shuffled order, from `offset` on, into `out` from row `at`;
   * returns how many were copied (fewer when the window ends first).
   */
  serve(offset: number, want: number, out: Float32Array, at: number): number {
    const d = this.d;
    const take = Math.min(want, this.length - offset);
    for (let i = 0; i < take; i++) {
      const src = this.perm[offset + i] * d;
      out.set(this.rows.subarray(src, src + d), (at + i) * d);
    }
    return take;
  }
}
