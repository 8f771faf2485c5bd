import { UserError } from '../../util/errors.js';
import { dtypeBytes, type ShardDtype } from '../../store/dtype.js';
import type { Rng } from '../../util/rng.js';

/**
 * The pure part of the external shuffle (SPEC §1, "shuffle"): record layout of the scratch
 * bucket files, how many buckets a memory budget allows, and the seeded bucket sampler.
 */

/**
 * One row in a bucket file: the activation in its storage dtype (padded to 4 bytes so that the
 * int32/float32 fields that follow stay aligned), token_id, context_id, position, and raw_mean,
 * raw_norm when the shards carry them. Keeping the storage dtype means scratch costs what the
 * input costs and no precision is gained or lost on the way.
 */
export interface RecordLayout {
  d: number;
  dtype: ShardDtype;
  raw: boolean;
  /** bytes of the activation, padded to a multiple of 4 */
  actBytes: number;
  /** bytes of one record, a multiple of 4 */
  bytes: number;
}

export function recordLayout(d: number, dtype: ShardDtype, raw: boolean): RecordLayout {
  const actBytes = Math.ceil((d * dtypeBytes(dtype)) / 4) * 4;
  return { d, dtype, raw, actBytes, bytes: actBytes + 12 + (raw ? 8 : 0) };
}

export interface ShufflePlan {
  rows: number;
  /** K: number of bucket files */
  buckets: number;
  /** rows of each bucket: ⌈N/K⌉ for the first N mod K, ⌊N/K⌋ for the rest */
  bucketRows: number[];
  /** first output row of each bucket */
  bucketStart: number[];
  /** C = ⌈N/K⌉, the largest bucket, what pass 2 holds in memory */
  capacity: number;
  /** B: rows buffered per bucket in pass 1 before they are appended to its file */
  scatterRows: number;
  /** the one buffer both passes share: max(C·(record + 4), K·B·record) bytes */
  arenaBytes: number;
  /** bytes of all bucket files together */
  scratchBytes: number;
}

/**
 * The largest buffer one process may hold; Node's typed arrays stop at 2³² elements and a single
 * read() at 2³¹ − 1 bytes, which the passes read and write in pieces of anyway.
 */
export const MAX_ARENA = 2 ** 32 - 4096;

/**
 * Choose K so that one bucket (its records plus a 4-byte permutation entry per row) fits the
 * budget in pass 2, and give pass 1 the same budget for K write buffers. Buckets have fixed,
 * nearly equal sizes, so none can overflow whatever the seed.
 */
export function planShuffle(rows: number, layout: RecordLayout, memory: number): ShufflePlan {
  if (!Number.isSafeInteger(rows) || rows < 1) throw new UserError(`nothing to shuffle (${rows} rows)`);
  // Rng.int draws below 2³², and the sampler draws below the rows left.
  if (rows > 2 ** 32) throw new UserError(`cannot shuffle ${rows} rows in one run (at most 2^32); shuffle the input in parts`);
  const plan = tryPlan(rows, layout, Math.min(memory, MAX_ARENA));
  if (plan) return plan;
  // Smallest budget that works, for the message: plans get feasible as memory grows.
  let lo = Math.max(1, Math.floor(Math.min(memory, MAX_ARENA)));
  let hi = lo;
  while (!tryPlan(rows, layout, hi)) {
    lo = hi;
    hi *= 2;
    if (hi > MAX_ARENA) throw new UserError(`cannot shuffle ${rows} rows of ${layout.bytes} bytes within ${MAX_ARENA} bytes of memory; shuffle the input in parts`);
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (tryPlan(rows, layout, mid)) hi = mid;
    else lo = mid;
  }
  throw new UserError(`--memory ${formatBytes(memory)} is too small to shuffle ${rows} rows of ${layout.bytes} bytes; it needs at least ${formatBytes(hi)}`);
}

function tryPlan(rows: number, layout: RecordLayout, memory: number): ShufflePlan | null {
  const rec = layout.bytes;
  const maxC = Math.floor(memory / (rec + 4));
  if (maxC < 1) return null;
  const K = Math.ceil(rows / maxC);
  const B = Math.floor(memory / (K * rec));
  if (B < 1) return null;
  const base = Math.floor(rows / K);
  const extra = rows % K;
  const bucketRows: number[] = [];
  const bucketStart: number[] = [];
  for (let b = 0, s = 0; b < K; b++) {
    bucketStart.push(s);
    bucketRows.push(base + (b < extra ? 1 : 0));
    s += bucketRows[b];
  }
  const capacity = base + (extra ? 1 : 0);
  const scatterRows = Math.min(B, capacity);
  return {
    rows,
    buckets: K,
    bucketRows,
    bucketStart,
    capacity,
    scatterRows,
    arenaBytes: Math.max(capacity * (rec + 4), K * scatterRows * rec),
    scratchBytes: rows * rec,
  };
}

/**
 * Draws the bucket of each successive row with probability proportional to the room left in
 * each bucket (a Fenwick tree over the room, O(log K) a draw). That is dealing the rows into
 * fixed-size buckets uniformly at random; with a uniform permutation inside each bucket, the
 * concatenated output is a uniformly random permutation of the input.
 */
export class BucketSampler {
  private readonly tree: Float64Array;
  private readonly k: number;
  private left: number;
  private readonly top: number;

  /** room[b] = rows bucket b still takes */
  constructor(room: readonly number[]) {
    this.k = room.length;
    this.tree = new Float64Array(this.k + 1);
    this.left = 0;
    for (let b = 0; b < this.k; b++) {
      if (!(room[b] >= 0)) throw new RangeError(`BucketSampler: negative room ${room[b]} for bucket ${b}`);
      this.add(b, room[b]);
      this.left += room[b];
    }
    let top = 1;
    while (top * 2 <= this.k) top *= 2;
    this.top = top;
  }

  get rowsLeft(): number {
    return this.left;
  }

  private add(b: number, v: number): void {
    for (let i = b + 1; i <= this.k; i += i & -i) this.tree[i] += v;
  }

  draw(rng: Rng): number {
    if (this.left < 1) throw new RangeError('BucketSampler: every bucket is full');
    let u = rng.int(this.left);
    // Binary lifting: the first bucket whose cumulative room exceeds u.
    let pos = 0;
    for (let step = this.top; step > 0; step >>= 1) {
      const next = pos + step;
      if (next <= this.k && this.tree[next] <= u) {
        pos = next;
        u -= this.tree[next];
      }
    }
    this.add(pos, -1);
    this.left--;
    return pos;
  }
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** "2GB", "512M", "1.5g", "65536" → bytes; K/M/G/T are powers of 1024 (as in sort -S). */
export function parseBytes(s: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) return null;
  const v = Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()]);
  return Number.isSafeInteger(v) && v > 0 ? v : null;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n}B` : `${+v.toPrecision(3)}${units[u]}`;
}
