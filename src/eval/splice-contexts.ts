import type { LmTokenizer } from '../lm/tokenizer.js';
import { ContextPacker } from '../harvest/contexts.js';

/**
 * Held-out text packed into batches of contexts for splice-eval: documents tokenized and joined
 * ('concat') into contexts of T tokens, BOS first. Each context runs on its first T − 1 positions
 * (`ids`) and is scored on the token each of them predicts (`next`).
 */
export class HeldOutContexts<P> {
  /** the positions run [B × (T − 1)] */
  readonly ids: Int32Array;
  /** the token each position predicts */
  readonly next: Int32Array;
  private readonly packer: ContextPacker<P>;
  private readonly docs: AsyncIterator<{ text: string; position: P }>;
  private readonly packed: Int32Array;
  private readonly special: Set<number>;
  private ended = false;
  private lastPos: P | null = null;

  constructor(
    corpus: { documents(from?: P | null): AsyncIterable<{ text: string; position: P }> },
    private readonly tokenizer: LmTokenizer,
    private readonly T: number,
    private readonly maxContexts: number,
    private readonly includeSpecial: boolean,
  ) {
    this.packer = new ContextPacker<P>(T, tokenizer.bosId, tokenizer.eosId, 'concat');
    this.docs = corpus.documents(null)[Symbol.asyncIterator]();
    this.packed = new Int32Array(maxContexts * T);
    this.ids = new Int32Array(maxContexts * (T - 1));
    this.next = new Int32Array(maxContexts * (T - 1));
    this.special = new Set([tokenizer.bosId, tokenizer.eosId]);
  }

  /** Whether the position holding this token counts (by default special tokens do not). */
  counts(token: number): boolean {
    return this.includeSpecial || !this.special.has(token);
  }

  /**
   * Pack the next batch into ids and next; returns its contexts (0 once the text is used up).
   * Filling stops once the positions it will count reach `budget`, so that at most one context's
   * worth is evaluated beyond --max-tokens.
   */
  async take(budget: number): Promise<number> {
    const { T, packed } = this;
    const Tr = T - 1;
    let B = 0;
    let expected = 0;
    while (B < this.maxContexts && expected < budget) {
      const c = this.packer.take();
      if (c) {
        packed.set(c.ids, B * T);
        for (let t = 0; t < Tr; t++) if (this.counts(c.ids[t])) expected++;
        B++;
        continue;
      }
      if (this.ended) break;
      const r = await this.docs.next();
      if (r.done) this.ended = true;
      else {
        this.packer.push(this.tokenizer.encode(r.value.text), this.lastPos);
        this.lastPos = r.value.position;
      }
    }
    for (let b = 0; b < B; b++) {
      this.ids.set(packed.subarray(b * T, b * T + Tr), b * Tr);
      this.next.set(packed.subarray(b * T + 1, (b + 1) * T), b * Tr);
    }
    return B;
  }

  /** every document read and every context taken */
  get exhausted(): boolean {
    return this.ended && this.packer.pending === 0;
  }
}
