/**
 * Cutting tokenized documents into contexts (SPEC §1): every context is `ctx` tokens with BOS
 * first. In 'concat' mode documents are joined with EOS into one stream and each context takes the
 * next ctx − 1 tokens of it (a document may span contexts); in 'pad' mode every document starts
 * its own contexts and the last one is padded with EOS, the padding marked invalid so it never
 * reaches the shards.
 *
 * Where a context starts is recorded as a StreamPosition: the corpus position after which the
 * document holding its first stream token begins, and the token offset into that document (its
 * tokens plus its EOS). Re-tokenizing from there reproduces the rest exactly, which is what makes
 * a harvest resumable at any context boundary.
 */
export interface StreamPosition<P> {
  /** corpus position to resume the document stream from (null = the beginning) */
  after: P | null;
  /** tokens of that document (EOS included) already used by earlier contexts */
  offset: number;
}

export interface Context<P> {
  /** ctx token ids, BOS first */
  ids: Int32Array;
  /** tokens that are real (ctx, except for a padded last context in 'pad' mode) */
  valid: number;
  start: StreamPosition<P>;
}

export type PackMode = 'concat' | 'pad';

export class ContextPacker<P> {
  private readonly queue: Context<P>[] = [];
  private cur: Int32Array;
  private filled = 1;
  private curStart: StreamPosition<P> | null = null;

  constructor(
    readonly ctx: number,
    readonly bos: number,
    readonly eos: number,
    readonly mode: PackMode = 'concat',
  ) {
    if (!Number.isSafeInteger(ctx) || ctx < 2) throw new RangeError(`context length must be at least 2 (BOS + one token), got ${ctx}`);
    this.cur = this.fresh();
  }

  /**
   * Add a document: `tokens` without EOS (the packer appends it), `after` the corpus position the
   * document follows, `skip` the tokens of it already consumed before a resume.
   */
  push(tokens: Int32Array, after: P | null, skip = 0): void {
    const n = tokens.length + 1; // + EOS
    let i = skip;
    if (this.mode === 'pad' && this.filled > 1) this.finish(this.filled); // a document never shares a context
    while (i < n) {
      if (this.filled === 1) this.curStart = { after, offset: i };
      const take = Math.min(this.ctx - this.filled, n - i);
      for (let j = 0; j < take; j++) this.cur[this.filled + j] = i + j < tokens.length ? tokens[i + j] : this.eos;
      this.filled += take;
      i += take;
      if (this.filled === this.ctx) this.finish(this.ctx);
    }
    if (this.mode === 'pad' && this.filled > 1) this.finish(this.filled);
  }

  /** Complete contexts, oldest first. */
  take(): Context<P> | undefined {
    return this.queue.shift();
  }

  get pending(): number {
    return this.queue.length;
  }

  /**
   * The corpus has ended: queue the partial context being filled, as is (padded with EOS, the
   * padding invalid), so that its tokens are not dropped. A harvest leaves it out (every context
   * it writes is whole, so that a resume can pick up the stream exactly); `sae encode` encodes
   * every token it is given.
   */
  flush(): void {
    if (this.filled > 1) this.finish(this.filled);
  }

  private finish(valid: number): void {
    for (let j = valid; j < this.ctx; j++) this.cur[j] = this.eos;
    this.queue.push({ ids: this.cur, valid, start: this.curStart! });
    this.cur = this.fresh();
    this.filled = 1;
    this.curStart = null;
  }

  private fresh(): Int32Array {
    const a = new Int32Array(this.ctx);
    a[0] = this.bos;
    return a;
  }
}
