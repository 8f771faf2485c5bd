import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { openSafetensors } from '../../src/util/safetensors.js';
import type { RawTensor } from '../../src/lm/tensors.js';

/** Write a safetensors file from raw tensors (any dtype), the way huggingface/safetensors lays it out. */
export async function writeRawSafetensors(file: string, tensors: Record<string, RawTensor>, headerPatch?: (h: Record<string, unknown>) => void): Promise<void> {
  const header: Record<string, unknown> = {};
  let off = 0;
  const names = Object.keys(tensors).sort();
  for (const n of names) {
    const t = tensors[n];
    header[n] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.bytes.length] };
    off += t.bytes.length;
  }
  headerPatch?.(header);
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await fs.writeFile(file, Buffer.concat([len, json, ...names.map((n) => Buffer.from(tensors[n].bytes))]));
}

/** Every tensor of a fixture's model.safetensors, as stored. */
export async function readRaw(file: string): Promise<Record<string, RawTensor>> {
  const f = await openSafetensors(file);
  const out: Record<string, RawTensor> = {};
  for (const name of f.entries.keys()) out[name] = await f.read(name);
  await f.close();
  return out;
}

/** Copy a fixture model folder's config and tokenizer files into dir (weights are the caller's). */
export async function copyModelFiles(from: string, dir: string, skip: string[] = ['model.safetensors', 'reference.safetensors']): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  for (const f of await fs.readdir(from)) if (!skip.includes(f)) await fs.copyFile(path.join(from, f), path.join(dir, f));
}

/** float32 → bfloat16 (round to nearest even), for writing BF16 variants of float32 weights. */
export function toBf16Bytes(f32: Float32Array): Uint8Array {
  const u = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < u.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >> 16) & 1)) >>> 16;
  return new Uint8Array(out.buffer);
}
