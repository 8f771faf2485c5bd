import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// The compiled build (npm test builds it first): the worker thread runs dist/store/prefetch-worker.js.
import { openBatchSource } from '../dist/stream/prefetch.js';
import { BatchStream } from '../dist/stream/batch-stream.js';
import { openShards, type ShardSet } from '../dist/store/shard-set.js';
import { writeSynth } from '../dist/pipeline/synth.js';

let root: string;
let set: ShardSet;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-prefetch-'));
  await writeSynth({ out: root, d: 8, fTrue: 16, kTrue: 2, rows: 1000, seed: 4, rowsPerShard: 300 });
  set = await openShards(root);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('prefetching batch source', () => {
  it('hands out the same batches and positions as the in-thread stream, across epochs', async () => {
    const opts = { batchSize: 64, windowRows: 200, seed: 9, loop: true };
    const plain = new BatchStream(set, opts);
    const ahead = openBatchSource(set, opts, undefined, 3);
    const a = new Float32Array(64 * 8);
    const b = new Float32Array(64 * 8);
    try {
      for (let i = 0; i < 40; i++) {
        expect(await plain.next(a)).toBe(true);
        expect(await ahead.next(b)).toBe(true);
        expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
        expect(ahead.position()).toEqual(plain.position());
      }
    } finally {
      await ahead.close();
    }
  });

  it('resumes from a position it handed out', async () => {
    const opts = { batchSize: 50, windowRows: 120, seed: 2, loop: true };
    const first = openBatchSource(set, opts, undefined, 2);
    const x = new Float32Array(50 * 8);
    for (let i = 0; i < 7; i++) await first.next(x);
    const pos = first.position();
    await first.next(x);
    const expected = x.slice();
    await first.close();
    const again = openBatchSource(set, opts, pos, 2);
    const y = new Float32Array(50 * 8);
    await again.next(y);
    await again.close();
    expect(Buffer.from(y.buffer).equals(Buffer.from(expected.buffer))).toBe(true);
  });

  it('reports the end of a non-looping stream', async () => {
    const opts = { batchSize: 400, windowRows: 400, seed: 1, loop: false };
    const src = openBatchSource(set, opts, undefined, 2);
    const x = new Float32Array(400 * 8);
    const got: boolean[] = [];
    for (let i = 0; i < 3; i++) got.push(await src.next(x));
    await src.close();
    expect(got).toEqual([true, true, false]);
  });
});
