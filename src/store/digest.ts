import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { ShardSet } from './shard-set.js';

/** Bytes read from each end of a shard: the head holds the first rows' pages, the tail the footer. */
const SAMPLE = 64 * 1024;

/**
 * A short identity of a shard set's contents, recorded by a training run so that `--resume` can
 * tell the activations it was trained on from others with the same row count (a shuffled copy, a
 * re-harvest): per shard, in order, its name, rows, size and its first and last 64 KiB. Cheap (two
 * reads per shard) and independent of where the folder lives, so a moved folder still matches.
 */
export async function shardSetDigest(set: ShardSet): Promise<string> {
  const h = createHash('sha256');
  const buf = Buffer.alloc(SAMPLE);
  for (const f of set.files) {
    const fh = await fs.open(f.path, 'r');
    try {
      const { size } = await fh.stat();
      h.update(`${path.basename(f.path)}\0${f.rows}\0${size}\0`);
      const head = await fh.read(buf, 0, Math.min(SAMPLE, size), 0);
      h.update(buf.subarray(0, head.bytesRead));
      const tailAt = Math.max(0, size - SAMPLE);
      const tail = await fh.read(buf, 0, size - tailAt, tailAt);
      h.update(buf.subarray(0, tail.bytesRead));
    } finally {
      await fh.close();
    }
  }
  return h.digest('hex').slice(0, 16);
}
