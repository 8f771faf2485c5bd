import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeAll, type VectorWriter } from '../src/util/write-all.js';

/** A writer that takes at most `cap` bytes a call (0: none) and records what arrived. */
function fakeWriter(caps: number[]): VectorWriter & { got: number[]; calls: number } {
  const w = {
    got: [] as number[],
    calls: 0,
    async writev(buffers: Uint8Array[]) {
      const cap = caps[Math.min(w.calls++, caps.length - 1)];
      let n = 0;
      for (const b of buffers) {
        for (const x of b) {
          if (n === cap) return { bytesWritten: n };
          w.got.push(x);
          n++;
        }
      }
      return { bytesWritten: n };
    },
  };
  return w;
}

describe('writeAll', () => {
  it('continues after short writes, across piece boundaries', async () => {
    const w = fakeWriter([3, 1, 4, 100]);
    await writeAll(w, [Uint8Array.of(1, 2), Uint8Array.of(), Uint8Array.of(3, 4, 5, 6), Uint8Array.of(7, 8, 9)]);
    expect(w.got).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(w.calls).toBe(4);
  });

  it('fails rather than spins when a write makes no progress', async () => {
    const w = fakeWriter([2, 0]);
    await expect(writeAll(w, Uint8Array.of(1, 2, 3, 4, 5))).rejects.toThrow('write made no progress (0 of 3 bytes written)');
    expect(w.calls).toBe(2);
  });

  it('writes nothing for nothing', async () => {
    const w = fakeWriter([0]);
    await writeAll(w, new Uint8Array(0));
    await writeAll(w, []);
    expect(w.calls).toBe(0);
  });

  it('appends to a real file', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-write-all-'));
    const file = path.join(dir, 'f');
    await fs.writeFile(file, 'ab');
    const fh = await fs.open(file, 'a');
    try {
      await writeAll(fh, [Buffer.from('cd'), Buffer.from('ef')]);
      await writeAll(fh, Buffer.from('g'));
    } finally {
      await fh.close();
    }
    expect(await fs.readFile(file, 'utf8')).toBe('abcdefg');
    await fs.rm(dir, { recursive: true, force: true });
  });
});
