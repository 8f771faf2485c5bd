import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readSafetensors, writeSafetensors, encodeSafetensors } from '../src/util/safetensors.js';
import { UserError } from '../src/util/errors.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-st-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const sample = () => ({
  W: { dtype: 'F32' as const, shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, 1e-30, -7]) },
  b: { dtype: 'F64' as const, shape: [3], data: new Float64Array([Math.PI, -0, 1e300]) },
  i: { dtype: 'I32' as const, shape: [1], data: new Int32Array([-5]) },
  l: { dtype: 'I64' as const, shape: [2], data: new BigInt64Array([1n, -(2n ** 62n)]) },
  u: { dtype: 'U8' as const, shape: [3], data: new Uint8Array([0, 255, 7]) },
});

async function expectUserError(p: Promise<unknown>, re: RegExp): Promise<void> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).toMatch(re);
  expect((err as Error).message).not.toContain('\n');
}

describe('safetensors', () => {
  it('round-trips every dtype, shape and the metadata', async () => {
    const f = path.join(dir, 'rt.safetensors');
    await writeSafetensors(f, sample(), { format: 'pt', note: 'hello' });
    const { tensors, metadata } = await readSafetensors(f);
    expect(metadata).toEqual({ format: 'pt', note: 'hello' });
    const s = sample();
    for (const k of Object.keys(s) as (keyof ReturnType<typeof sample>)[]) {
      expect(tensors[k].dtype).toBe(s[k].dtype);
      expect(tensors[k].shape).toEqual(s[k].shape);
      expect(tensors[k].data.constructor).toBe(s[k].data.constructor);
      expect(Array.from(tensors[k].data as ArrayLike<number | bigint>)).toEqual(Array.from(s[k].data as ArrayLike<number | bigint>));
    }
    expect(Object.is((tensors.b.data as Float64Array)[1], -0)).toBe(true);
  });

  it('uses the standard layout: LE header length, space-padded to 8 bytes, data after it', () => {
    const bytes = encodeSafetensors({ a: { dtype: 'F32', shape: [1], data: new Float32Array([2]) } });
    const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(hlen % 8).toBe(0);
    const json = Buffer.from(bytes.subarray(8, 8 + hlen)).toString('utf8');
    expect(json).toMatch(/^\{.*\} *$/);
    expect(JSON.parse(json)).toEqual({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } });
    expect(new Float32Array(bytes.slice(8 + hlen).buffer)[0]).toBe(2);
  });

  it('returns aligned copies even when the tensor data sits at an odd offset', async () => {
    const f = path.join(dir, 'odd.safetensors');
    await writeSafetensors(f, {
      a: { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) },
      b: { dtype: 'F32', shape: [2], data: new Float32Array([4, 5]) },
    });
    const { tensors } = await readSafetensors(f);
    expect(tensors.b.data).toBeInstanceOf(Float32Array);
    expect(tensors.b.data.byteOffset % 4).toBe(0);
    expect(Array.from(tensors.b.data as Float32Array)).toEqual([4, 5]);
  });

  it('rejects a truncated file with a one-line error naming the file and the shortfall', async () => {
    const f = path.join(dir, 'model.safetensors');
    await writeSafetensors(f, sample());
    const full = await fs.readFile(f);
    await fs.writeFile(f, full.subarray(0, full.length - 5));
    await expectUserError(readSafetensors(f), /model\.safetensors: truncated \(expected \d+ bytes of tensor data, found \d+\)/);
  });

  it('rejects a file cut inside its header', async () => {
    const f = path.join(dir, 'cut.safetensors');
    await writeSafetensors(f, sample());
    const full = await fs.readFile(f);
    await fs.writeFile(f, full.subarray(0, 20));
    await expectUserError(readSafetensors(f), /cut\.safetensors: truncated/);
  });

  it('rejects a header that is not JSON', async () => {
    const f = path.join(dir, 'bad.safetensors');
    const json = Buffer.from('{"a": nope}   ');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fs.writeFile(f, Buffer.concat([len, json]));
    await expectUserError(readSafetensors(f), /bad\.safetensors: malformed header/);
  });

  it('rejects offsets that disagree with the shape', async () => {
    const f = path.join(dir, 'off.safetensors');
    const json = Buffer.from(JSON.stringify({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fs.writeFile(f, Buffer.concat([len, json, Buffer.alloc(4)]));
    await expectUserError(readSafetensors(f), /off\.safetensors: tensor a: data_offsets span 4 bytes/);
  });

  it('rejects an unknown dtype', async () => {
    const f = path.join(dir, 'dt.safetensors');
    const json = Buffer.from(JSON.stringify({ a: { dtype: 'BF16', shape: [1], data_offsets: [0, 2] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fs.writeFile(f, Buffer.concat([len, json, Buffer.alloc(2)]));
    await expectUserError(readSafetensors(f), /unsupported dtype "BF16"/);
  });

  it('rejects an absurd header length instead of allocating it', async () => {
    const f = path.join(dir, 'huge.safetensors');
    const len = Buffer.alloc(16);
    len.writeBigUInt64LE(2n ** 60n);
    await fs.writeFile(f, len);
    await expectUserError(readSafetensors(f), /huge\.safetensors: not a safetensors file/);
  });

  it('reports a missing file as a user error', async () => {
    await expectUserError(readSafetensors(path.join(dir, 'nope.safetensors')), /nope\.safetensors: no such file/);
  });

  it('refuses to write data that does not match the declared shape', async () => {
    await expect(
      writeSafetensors(path.join(dir, 'x.safetensors'), { a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }),
    ).rejects.toThrow(/does not match 2 elements/);
  });
});
