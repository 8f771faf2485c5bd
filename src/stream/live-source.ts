import { UserError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { preprocessRows, type Preprocessing } from '../store/preprocess.js';
import type { BatchSource } from './prefetch.js';
import type { DataPosition } from './batch-stream.js';
import { ActivationRows, cursorAt, type ContextSpan, type RowCursor, type RowOptions, type RowSource } from '../harvest/rows.js';
import { ShuffledWindow } from './window.js';

/**
 * Training straight from the host LM, no disk (what sparsify does): the harvest's row stream fills
 * a window of `windowRows` rows in memory, preprocessed as harvest would (SPEC §3; dataset_scale's
 * factor is the caller's: estimated once, or the checkpoint's), shuffled by a
 * permutation seeded by (seed, epoch, window), and batches are cut from the shuffled windows.
 *
 * Exactly resumable like the shard stream: a window's rows depend only on where it starts in the
 * corpus (a RowCursor), so the checkpoint records that cursor and the offset into the window; a
 * resume re-harvests one window and continues bit for bit. When the corpus runs out, the next
 * epoch starts it again from the beginning (a window never spans two epochs).
 */
export interface LivePosition<P> {
  kind: 'live';
  epoch: number;
  window: number;
  /** where the window's first row comes from (null = the start of the corpus) */
  start: RowCursor<P> | null;
  /** rows of the window already served */
  offset: number;
  rowsServed: number;
  seed: number;
  windowRows: number;
}

export class LiveBatchSource<P> implements BatchSource {
  private readonly d: number;
  private readonly win: ShuffledWindow;
  private pos: LivePosition<P>;
  /** the stream positioned at the end of the current window */
  private rows: ActivationRows<P> | null = null;
  private nextStart: RowCursor<P> | null = null;
  private epochEnded = false;
  private loaded = false;

  constructor(
    private readonly model: HookedTransformer,
    private readonly tokenizer: LmTokenizer,
    private readonly corpus: RowSource<P>,
    private readonly rowOpts: RowOptions,
    /** scale: dataset_scale's factor (required with it) */
    private readonly opts: { batchSize: number; windowRows: number; seed: number; preprocessing: Preprocessing; scale?: number },
    position?: LivePosition<P>,
  ) {
    if (rowOpts.hooks.length !== 1) throw new Error('LiveBatchSource: one hook');
    if (opts.preprocessing === 'dataset_scale' && opts.scale === undefined) throw new Error('LiveBatchSource: dataset_scale needs its scale');
    this.d = model.cfg.dModel;
    const W = Math.max(opts.windowRows, opts.batchSize);
    this.win = new ShuffledWindow(W, this.d);
    if (position) {
      if (position.kind !== 'live' || position.seed !== opts.seed || position.windowRows !== W) throw new UserError('cannot resume the in-memory harvest exactly: the checkpoint was written with another seed or window');
      this.pos = { ...position };
    } else {
      this.pos = { kind: 'live', epoch: 0, window: 0, start: null, offset: 0, rowsServed: 0, seed: opts.seed, windowRows: W };
    }
  }

  /** Harvest the window that starts at this.pos.start into win, preprocess and permute it. */
  private async loadWindow(): Promise<void> {
    const W = this.pos.windowRows;
    const d = this.d;
    if (!this.rows) this.rows = new ActivationRows<P>(this.model, this.tokenizer, this.corpus, this.rowOpts, this.pos.start, 0);
    const hook = this.rowOpts.hooks[0];
    const spans: ContextSpan<P>[] = [];
    const base = this.rows.rows;
    let n = 0;
    while (n < W) {
      const b = await this.rows.next(W - n);
      if (!b) break;
      this.win.rows.set(b.acts[hook], n * d);
      spans.push(...b.spans);
      n += b.n;
    }
    this.epochEnded = n < W;
    if (n === 0) {
      if (this.pos.epoch === 0 && this.pos.window === 0) throw new UserError('the corpus yielded no tokens to train on');
    }
    // a limited next() ends the stream: the next window restarts it from the cursor after row n
    this.nextStart = n > 0 && !this.epochEnded ? cursorAt(spans, base + n) : null;
    this.rows = null;
    preprocessRows(this.win.rows, n, d, this.opts.preprocessing, this.opts.scale);
    this.win.shuffle(n, Rng.derive(this.opts.seed, `live/${this.pos.epoch}/${this.pos.window}`));
    this.loaded = true;
  }

  private async advance(): Promise<void> {
    if (this.epochEnded) {
      this.pos = { ...this.pos, epoch: this.pos.epoch + 1, window: 0, start: null, offset: 0 };
    } else {
      this.pos = { ...this.pos, window: this.pos.window + 1, start: this.nextStart, offset: 0 };
    }
    await this.loadWindow();
  }

  async next(out: Float32Array): Promise<boolean> {
    const B = this.opts.batchSize;
    if (!this.loaded) await this.loadWindow();
    let filled = 0;
    while (filled < B) {
      if (this.pos.offset >= this.win.length) {
        await this.advance();
        if (this.win.length === 0) await this.advance(); // an empty tail window: start the next epoch
        continue;
      }
      const take = this.win.serve(this.pos.offset, B - filled, out, filled);
      filled += take;
      this.pos.offset += take;
    }
    this.pos.rowsServed += B;
    return true;
  }

  position(): DataPosition {
    return { ...this.pos } as unknown as DataPosition;
  }

  async close(): Promise<void> {}
}
