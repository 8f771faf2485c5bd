import { UserError } from '../util/errors.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { ContextPacker, type Context, type PackMode, type StreamPosition } from './contexts.js';

/**
 * The harvest's row stream, shared by `sae harvest` (rows → shards) and training straight from
 * the model (rows → the trainer's window): documents → contexts → one forward pass per batch of
 * contexts → the activation of every harvested position at each hook, in order.
 *
 * A RowCursor names any row of the stream by the context holding it (where that context starts in
 * the corpus, its index) and the rows of it before; starting from a cursor reproduces the stream
 * from that row exactly.
 */
export interface RowCursor<P> {
  start: StreamPosition<P>;
  /** index of the context in the stream */
  context: number;
  /** rows of that context that come before the cursor */
  rowsDone: number;
}

export interface RowSource<P> {
  describe(): string;
  documents(from?: P | null): AsyncIterable<{ text: string; position: P }>;
}

export interface RowOptions {
  hooks: string[];
  ctx: number;
  mode: PackMode;
  /** leave position 0 (BOS) out */
  skipBos: boolean;
  /** contexts per forward pass */
  batch: number;
  /** the host LM as messages name it (default: its folder) */
  model?: string;
  /** when the corpus ends, encode its last, partial context too (`sae encode`; a harvest drops it) */
  partialLast?: boolean;
}

/** Where in the stream the rows of one context lie (absolute row indices). */
export interface ContextSpan<P> {
  context: number;
  start: StreamPosition<P>;
  /** absolute index of the context's first harvested row (rows before a resume included) */
  first: number;
  /** harvested rows the context has */
  rows: number;
}

export interface RowBatch<P> {
  n: number;
  /** per hook, n×d rows (views into buffers reused by the next call) */
  acts: Record<string, Float32Array>;
  tokenIds: Int32Array;
  contextIds: Int32Array;
  positions: Int32Array;
  spans: ContextSpan<P>[];
}

export class ActivationRows<P> {
  private readonly packer: ContextPacker<P>;
  private readonly docs: AsyncIterator<{ text: string; position: P }>;
  private firstDoc = true;
  private lastPos: P | null;
  private corpusEnded = false;
  private contextIndex: number;
  private skipRows: number;
  private readonly resumeOffset: number;
  /** absolute index of the next row */
  rows: number;
  /** tokens of the documents read so far (EOS not counted): tells "no text" from "text shorter than a context" */
  tokensRead = 0;
  private readonly ids: Int32Array;
  private readonly out: Record<string, Float32Array>;
  private readonly tok: Int32Array;
  private readonly ctxIds: Int32Array;
  private readonly pos: Int32Array;

  constructor(
    private readonly model: HookedTransformer,
    tokenizer: LmTokenizer,
    corpus: RowSource<P>,
    private readonly opts: RowOptions,
    from: RowCursor<P> | null = null,
    rowsBefore = 0,
  ) {
    this.tokenizer = tokenizer;
    this.packer = new ContextPacker<P>(opts.ctx, tokenizer.bosId, tokenizer.eosId, opts.mode);
    this.docs = corpus.documents(from?.start.after ?? null)[Symbol.asyncIterator]();
    this.lastPos = from?.start.after ?? null;
    this.resumeOffset = from?.start.offset ?? 0;
    this.contextIndex = from?.context ?? 0;
    this.skipRows = from?.rowsDone ?? 0;
    this.rows = rowsBefore;
    const N = opts.batch * opts.ctx;
    const d = model.cfg.dModel;
    this.ids = new Int32Array(N);
    this.out = Object.fromEntries(opts.hooks.map((h) => [h, new Float32Array(N * d)]));
    this.tok = new Int32Array(N);
    this.ctxIds = new Int32Array(N);
    this.pos = new Int32Array(N);
  }

  private readonly tokenizer: LmTokenizer;

  private async nextContext(): Promise<Context<P> | undefined> {
    for (;;) {
      const c = this.packer.take();
      if (c) return c;
      if (this.corpusEnded) return undefined;
      const r = await this.docs.next();
      if (r.done) {
        this.corpusEnded = true;
        if (this.opts.partialLast) this.packer.flush();
        continue;
      }
      const ids = this.tokenizer.encode(r.value.text);
      this.tokensRead += ids.length;
      this.packer.push(ids, this.lastPos, this.firstDoc ? this.resumeOffset : 0);
      this.firstDoc = false;
      this.lastPos = r.value.position;
    }
  }

  /** The next batch of rows (at most `limit`), or null when the corpus is done. */
  async next(limit = Infinity): Promise<RowBatch<P> | null> {
    const { opts, model } = this;
    const T = opts.ctx;
    const d = model.cfg.dModel;
    for (;;) {
      const batch: Context<P>[] = [];
      while (batch.length < opts.batch) {
        const c = await this.nextContext();
        if (!c) break;
        batch.push(c);
      }
      if (!batch.length) return null;
      for (let i = 0; i < batch.length; i++) this.ids.set(batch[i].ids, i * T);
      const res = model.run(this.ids.subarray(0, batch.length * T), batch.length, T, { capture: opts.hooks });
      const first = opts.skipBos ? 1 : 0;
      const spans: ContextSpan<P>[] = [];
      let n = 0;
      for (let i = 0; i < batch.length && n < limit; i++) {
        const c = batch[i];
        const from = first + this.skipRows;
        this.skipRows = 0;
        const take = Math.min(c.valid - from, limit - n);
        if (take > 0) {
          spans.push({ context: this.contextIndex, start: c.start, first: this.rows + n - (from - first), rows: c.valid - first });
          for (let t = from; t < from + take; t++) {
            for (const h of opts.hooks) this.out[h].set(res.captured[h].subarray((i * T + t) * d, (i * T + t + 1) * d), n * d);
            this.tok[n] = c.ids[t];
            this.ctxIds[n] = this.contextIndex;
            this.pos[n] = t;
            n++;
          }
        }
        this.contextIndex++;
      }
      // contexts past the limit are not consumed: the cursor of the caller points into them
      if (n === 0) continue;
      for (const h of opts.hooks) this.checkFinite(h, n);
      this.rows += n;
      const acts = Object.fromEntries(opts.hooks.map((h) => [h, this.out[h].subarray(0, n * d)]));
      return { n, acts, tokenIds: this.tok.subarray(0, n), contextIds: this.ctxIds.subarray(0, n), positions: this.pos.subarray(0, n), spans };
    }
  }

  /**
   * Text cannot make a sound model produce NaN or Inf, so one found here is the model's doing:
   * say so, naming where, before the shard writer reports it as a bad row of the output.
   */
  private checkFinite(hook: string, n: number): void {
    const a = this.out[hook];
    const d = this.model.cfg.dModel;
    // a float64 sum of float32 values is finite exactly when every value is
    let sum = 0;
    for (let i = 0; i < n * d; i++) sum += a[i];
    if (Number.isFinite(sum)) return;
    let i = 0;
    while (Number.isFinite(a[i])) i++;
    const r = Math.floor(i / d);
    const what = Number.isNaN(a[i]) ? 'NaN' : 'Inf';
    const name = this.opts.model ?? (this.model.dir || 'the host LM');
    throw new UserError(
      `model ${name} produced ${what} at ${hook} (context ${this.ctxIds[r]}, position ${this.pos[r]}, token ${this.tok[r]}): ` +
        `its weights (or a numerical overflow in its forward pass) are the likely cause, not the text; check them with sae model run`,
    );
  }

  get contexts(): number {
    return this.contextIndex;
  }
}

/**
 * The cursor of absolute row `end` (the first row not yet consumed), from the spans of the rows
 * before it: the context holding row end − 1 and the rows of it up to `end`. Spans wholly before
 * end − 1 are dropped from `live`.
 */
export function cursorAt<P>(live: ContextSpan<P>[], end: number): RowCursor<P> {
  while (live.length > 1 && live[0].first + live[0].rows <= end - 1) live.shift();
  const c = live[0];
  return { start: c.start, context: c.context, rowsDone: end - c.first };
}
