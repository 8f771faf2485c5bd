import { UserError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { decodeRows } from '../store/row-reader.js';
import type { ShardSet } from '../store/shard-set.js';
import { ShuffledWindow } from './window.js';

/**
 * Where a BatchStream stands. Plain numbers so that it goes into a checkpoint as JSON; a stream
 * built from it continues exactly where the original left off.
 */
export interface DataPosition {
  epoch: number;
  /** window index within the epoch */
  window: number;
  /** rows of that (shuffled) window already served */
  offset: number;
  /** rows served since the stream began, across epochs and resumes */
  rowsServed: number;
  // What the stream's order depends on, checked on resume so that a changed dataset or setting
  // cannot silently resume into a different order.
  seed: number;
  windowRows: number;
  rows: number;
}

export interface BatchStreamOptions {
  batchSize: number;
  /** rows per shuffle window (default 16·batchSize, at least batchSize) */
  windowRows?: number;
  seed: number;
  /** start a new epoch (reshuffled) at the end instead of stopping */
  loop: boolean;
}

/**
 * The trainer's data source: shuffled batches from a ShardSet with an exactly resumable position.
 *
 * Each epoch visits the files in an order permuted by (seed, epoch) and cuts the resulting row
 * sequence into windows of windowRows consecutive rows; each window is shuffled by a permutation
 * derived from (seed, epoch, window) and batches are cut from the concatenation of shuffled
 * windows (a batch may span windows and epochs). Since a window's content and order depend on
 * nothing else, resuming re-reads one window and regenerates its permutation.
 *
 * Window shuffling mixes rows only within windowRows; rows should come from shuffled shards
 * (a full shuffle first) when the input is ordered, as harvested activations are.
 */
export class BatchStream {
  readonly d: number;
  readonly batchSize: number;
  readonly windowRows: number;
  readonly seed: number;
  readonly loop: boolean;
  private readonly set: ShardSet;
  private readonly nWindows: number;
  private epoch: number;
  private window: number;
  private offset: number;
  private served: number;
  private shardOrder: Int32Array | null = null;
  private orderEpoch = -1;
  /** start row (in the epoch's virtual row sequence) of each file in shardOrder */
  private readonly orderStart: Float64Array;
  // Allocated once: first touch of fresh memory is slow on the target VMs.
  private readonly win: ShuffledWindow;
  private curEpoch = -1;
  private curWindow = -1;
  private ended = false;
  private readonly groupBuf: Float32Array;
  private groupKey = '';
  private decoded = 0;

  constructor(set: ShardSet, opts: BatchStreamOptions, position?: DataPosition) {
    this.set = set;
    this.d = set.meta.d;
    const bs = opts.batchSize;
    if (!Number.isSafeInteger(bs) || bs < 1) throw new UserError(`batch size must be a positive integer, got ${bs}`);
    const wr = opts.windowRows ?? 16 * bs;
    if (!Number.isSafeInteger(wr) || wr < bs) throw new UserError(`shuffle window must be an integer of at least the batch size (${bs}) rows, got ${wr}`);
    if (!Number.isSafeInteger(opts.seed)) throw new UserError(`seed must be an integer, got ${opts.seed}`);
    this.batchSize = bs;
    this.seed = opts.seed;
    this.loop = opts.loop;
    if (set.rows <= 0) throw new UserError('no activations to stream (0 rows)');
    // A window never needs to exceed the data; capping keeps the buffer no larger than the data.
    this.windowRows = Math.min(wr, set.rows);
    this.nWindows = Math.ceil(set.rows / this.windowRows);
    this.win = new ShuffledWindow(this.windowRows, this.d);
    let maxGroup = 0;
    for (const f of set.files) for (const g of f.rowGroups) maxGroup = Math.max(maxGroup, g);
    this.groupBuf = new Float32Array(maxGroup * this.d);
    this.orderStart = new Float64Array(set.files.length);
    if (position) {
      const p = position;
      const mismatch = (what: string, a: number, b: number) =>
        new UserError(`cannot resume the data stream exactly: it was saved with ${what}=${a} but now ${what}=${b}`);
      if (p.seed !== this.seed) throw mismatch('seed', p.seed, this.seed);
      if (p.windowRows !== this.windowRows) throw mismatch('shuffle window rows', p.windowRows, this.windowRows);
      if (p.rows !== set.rows) throw mismatch('total rows', p.rows, set.rows);
      if (!(Number.isSafeInteger(p.epoch) && p.epoch >= 0 && Number.isSafeInteger(p.window) && p.window >= 0 && p.window < this.nWindows
        && Number.isSafeInteger(p.offset) && p.offset >= 0 && p.offset <= this.windowRows
        && Number.isSafeInteger(p.rowsServed) && p.rowsServed >= 0)) {
        throw new UserError(`cannot resume the data stream: malformed position ${JSON.stringify(p)}`);
      }
      this.epoch = p.epoch;
      this.window = p.window;
      this.offset = p.offset;
      this.served = p.rowsServed;
    } else {
      this.epoch = 0;
      this.window = 0;
      this.offset = 0;
      this.served = 0;
    }
  }

  /** rows handed out in batches so far (including before a resume) */
  get rowsServed(): number {
    return this.served;
  }

  /** rows decoded from disk by this instance */
  get rowsDecoded(): number {
    return this.decoded;
  }

  get windowsPerEpoch(): number {
    return this.nWindows;
  }

  position(): DataPosition {
    return {
      epoch: this.epoch,
      window: this.window,
      offset: this.offset,
      rowsServed: this.served,
      seed: this.seed,
      windowRows: this.windowRows,
      rows: this.set.rows,
    };
  }

  /**
   * Fill `out` (batchSize×d) with the next batch. Returns false at the end of the data when not
   * looping; the final partial batch is dropped then (and `out` holds garbage).
   */
  async next(out: Float32Array): Promise<boolean> {
    return (await this.fill(out, false)) === this.batchSize;
  }

  /**
   * Like next, but at the end of non-looping data hands out the final partial batch: returns the
   * number of rows written to `out` (batchSize until the last batch, then the remainder, then 0).
   */
  async nextRows(out: Float32Array): Promise<number> {
    return this.fill(out, true);
  }

  private async fill(out: Float32Array, partial: boolean): Promise<number> {
    const d = this.d;
    if (out.length < this.batchSize * d) throw new RangeError(`BatchStream.next: output holds ${out.length} values, need ${this.batchSize}×${d}`);
    if (this.ended) return 0;
    // Position only advances once the batch is complete, so that an aborted (dropped) batch
    // leaves position() pointing at its first row.
    let epoch = this.epoch;
    let window = this.window;
    let offset = this.offset;
    let filled = 0;
    while (filled < this.batchSize) {
      if (offset >= this.windowLength(window)) {
        window++;
        offset = 0;
        if (window === this.nWindows) {
          if (!this.loop) {
            this.ended = true;
            if (!partial || filled === 0) return 0;
            this.epoch = epoch;
            this.window = window - 1;
            this.offset = this.windowLength(window - 1);
            this.served += filled;
            return filled;
          }
          epoch++;
          window = 0;
        }
        continue;
      }
      if (!this.loadedAt(epoch, window)) await this.loadWindow(epoch, window);
      const take = this.win.serve(offset, this.batchSize - filled, out, filled);
      filled += take;
      offset += take;
    }
    this.epoch = epoch;
    this.window = window;
    this.offset = offset;
    this.served += this.batchSize;
    return this.batchSize;
  }

  private windowLength(window: number): number {
    return Math.min(this.set.rows, (window + 1) * this.windowRows) - window * this.windowRows;
  }

  private loadedAt(epoch: number, window: number): boolean {
    return this.curEpoch === epoch && this.curWindow === window;
  }

  private orderFor(epoch: number): Int32Array {
    if (this.orderEpoch !== epoch || !this.shardOrder) {
      const order = new Int32Array(this.set.files.length);
      for (let i = 0; i < order.length; i++) order[i] = i;
      Rng.derive(this.seed, `shard-order/${epoch}`).shuffle(order);
      let s = 0;
      for (let i = 0; i < order.length; i++) {
        this.orderStart[i] = s;
        s += this.set.files[order[i]].rows;
      }
      this.shardOrder = order;
      this.orderEpoch = epoch;
    }
    return this.shardOrder;
  }

  private async loadWindow(epoch: number, window: number): Promise<void> {
    const d = this.d;
    const order = this.orderFor(epoch);
    const lo = window * this.windowRows;
    const hi = Math.min(this.set.rows, lo + this.windowRows);
    let dst = 0;
    for (let k = 0; k < order.length && dst < hi - lo; k++) {
      const f = this.set.files[order[k]];
      const fStart = this.orderStart[k];
      const fEnd = fStart + f.rows;
      if (fEnd <= lo + dst || fStart >= hi) continue;
      // rows [a, b) of this file belong to the window
      let a = lo + dst - fStart;
      const b = Math.min(f.rows, hi - fStart);
      let gStart = 0;
      for (let g = 0; g < f.rowGroups.length && a < b; g++) {
        const gEnd = gStart + f.rowGroups[g];
        if (gEnd > a) {
          await this.loadGroup(order[k], g, gStart, f.rowGroups[g]);
          const take = Math.min(b, gEnd) - a;
          const from = (a - gStart) * d;
          this.win.rows.set(this.groupBuf.subarray(from, from + take * d), dst * d);
          dst += take;
          a += take;
        }
        gStart = gEnd;
      }
    }
    this.win.shuffle(hi - lo, Rng.derive(this.seed, `window/${epoch}/${window}`));
    this.curEpoch = epoch;
    this.curWindow = window;
  }

  private async loadGroup(file: number, g: number, start: number, rows: number): Promise<void> {
    const key = `${file}/${g}`;
    if (this.groupKey === key) return;
    this.groupKey = '';
    await decodeRows(this.set.files[file], this.d, this.set.meta.dtype, this.set.meta.preprocessing, start, start + rows, this.groupBuf);
    this.groupKey = key;
    this.decoded += rows;
  }
}
