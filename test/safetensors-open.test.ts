import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeSafetensors, openSafetensors, readSafetensors } from '../src/util/safetensors.js';
import { UserError } from '../src/util/errors.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-st-open-'));
});
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

function rawFile(header: Record<string, unknown>, data: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

async function errorOf(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  return (err as Error).message;
}

describe('openSafetensors (the lazy reader) and readSafetensors share one header parser', () => {
  it('reads tensor by tensor the bytes the whole-file reader decodes', async () => {
    const f = path.join(dir, 'same.safetensors');
    await fs.writeFile(f, encodeSafetensors({ b: { dtype: 'F32', shape: [2], data: Float32Array.of(1, -2) }, a: { dtype: 'U8', shape: [1, 3], data: Uint8Array.of(7, 8, 9) } }, { format: 'pt' }));
    const whole = await readSafetensors(f);
    const open = await openSafetensors(f);
    try {
      expect(open.metadata).toEqual(whole.metadata);
      expect([...open.entries.keys()].sort()).toEqual(Object.keys(whole.tensors).sort());
      for (const [name, t] of Object.entries(whole.tensors)) {
        const raw = await open.read(name);
        expect(raw.dtype).toBe(t.dtype);
        expect(raw.shape).toEqual(t.shape);
        expect(Buffer.from(raw.bytes)).toEqual(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
      }
      expect(await errorOf(open.read('nope'))).toMatch(/same\.safetensors: no tensor nope/);
    } finally {
      await open.close();
    }
  });

  it('reads dtypes without a typed array (BF16) lazily, which the whole-file reader refuses', async () => {
    const f = path.join(dir, 'bf16.safetensors');
    await fs.writeFile(f, rawFile({ w: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] } }, Uint8Array.of(0x80, 0x3f, 0, 0x40)));
    const open = await openSafetensors(f);
    expect((await open.read('w')).bytes).toEqual(Uint8Array.of(0x80, 0x3f, 0, 0x40));
    await open.close();
    expect(await errorOf(readSafetensors(f))).toMatch(/tensor w: unsupported dtype "BF16"/);
  });

  it('gives both readers the same errors', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['gap', rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [1, 2] } }, Uint8Array.of(0, 0)), /tensor a: data_offsets \[1, 2\] leave a gap or overlap/],
      ['overlap', rawFile({ a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [2], data_offsets: [1, 3] } }, Uint8Array.of(0, 0, 0)), /leave a gap or overlap/],
      ['trailing', rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, Uint8Array.of(0, 0, 0)), /2 trailing bytes after the tensor data/],
      ['short', rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, Uint8Array.of(0, 0)), /truncated \(expected 8 bytes of tensor data, found 2\): tensor a lies beyond the end of the file/],
      ['metadata', rawFile({ __metadata__: { n: 1 } }, new Uint8Array(0)), /malformed header \(__metadata__\.n is not a string\)/],
      ['tiny', Buffer.alloc(3), /tiny\.safetensors: truncated \(3 bytes, too short for a safetensors header\)/],
    ];
    for (const [name, bytes, re] of cases) {
      const f = path.join(dir, `${name}.safetensors`);
      await fs.writeFile(f, bytes);
      expect(await errorOf(readSafetensors(f))).toMatch(re);
      expect(await errorOf(openSafetensors(f))).toMatch(re);
    }
  });

  it('reports a missing file as a user error', async () => {
    expect(await errorOf(openSafetensors(path.join(dir, 'absent.safetensors')))).toMatch(/absent\.safetensors: no such file/);
  });
});
