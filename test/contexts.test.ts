import { describe, expect, it } from 'vitest';
import { ContextPacker, type Context } from '../src/harvest/contexts.js';

const BOS = 100;
const EOS = 101;
// documents as token arrays; the corpus position of document i is i
const docs = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [], [12, 13, 14, 15, 16]].map((d) => Int32Array.from(d));

function packAll(mode: 'concat' | 'pad', ctx: number, from?: { after: number | null; offset: number }): Context<number>[] {
  const p = new ContextPacker<number>(ctx, BOS, EOS, mode);
  const start = from?.after === null || from === undefined ? 0 : from.after + 1;
  const out: Context<number>[] = [];
  for (let i = start; i < docs.length; i++) {
    p.push(docs[i], i === 0 ? null : i - 1, i === start ? (from?.offset ?? 0) : 0);
    for (let c; (c = p.take()); ) out.push(c);
  }
  return out;
}

describe('contexts (SPEC §1)', () => {
  it('puts BOS first and joins documents with EOS', () => {
    const cs = packAll('concat', 5);
    expect(cs.map((c) => Array.from(c.ids))).toEqual([
      [BOS, 1, 2, 3, EOS],
      [BOS, 4, 5, 6, 7],
      [BOS, 8, 9, 10, EOS],
      [BOS, 11, EOS, EOS, 12],
      [BOS, 13, 14, 15, 16],
    ]);
    expect(cs.every((c) => c.valid === 5)).toBe(true);
  });

  it('gives each document its own contexts in pad mode, padding marked invalid', () => {
    const cs = packAll('pad', 5);
    expect(cs.map((c) => [Array.from(c.ids), c.valid])).toEqual([
      [[BOS, 1, 2, 3, EOS], 5],
      [[BOS, 4, 5, 6, 7], 5],
      [[BOS, 8, 9, 10, EOS], 5],
      [[BOS, 11, EOS, EOS, EOS], 3],
      [[BOS, EOS, EOS, EOS, EOS], 2],
      [[BOS, 12, 13, 14, 15], 5],
      [[BOS, 16, EOS, EOS, EOS], 3],
    ]);
  });

  for (const mode of ['concat', 'pad'] as const) {
    it(`resumes from any context's start position with the same remaining contexts (${mode})`, () => {
      for (const ctx of [2, 3, 5, 8]) {
        const all = packAll(mode, ctx);
        all.forEach((c, i) => {
          const rest = packAll(mode, ctx, c.start);
          expect(rest.map((r) => Array.from(r.ids)), `ctx ${ctx} from context ${i}`).toEqual(all.slice(i).map((r) => Array.from(r.ids)));
        });
      }
    });
  }
});
