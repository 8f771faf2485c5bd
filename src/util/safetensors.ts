import { promises as fs } from 'node:fs';
import { writeFileAtomic, describeFsError } from './atomic.js';
import { UserError } from './errors.js';

/**
 * The safetensors container (as written by huggingface/safetensors): an 8-byte little-endian
 * header length, a JSON header mapping names to {dtype, shape, data_offsets} plus an optional
 * string-valued `__metadata__`, then the raw little-endian tensor bytes. SAELens loads
 * checkpoints in this format, so the layout must match the reference exactly.
 */
export type SafetensorsDtype = 'F32' | 'F64' | 'I32' | 'I64' | 'U8';

export type TensorData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

export interface Tensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: TensorData;
}

export interface SafetensorsFile {
  tensors: Record<string, Tensor>;
  metadata: Record<string, string>;
}

const BYTES: Record<SafetensorsDtype, number> = { F32: 4, F64: 8, I32: 4, I64: 8, U8: 1 };

const CTOR = {
  F32: Float32Array,
  F64: Float64Array,
  I32: Int32Array,
  I64: BigInt64Array,
  U8: Uint8Array,
} as const;

/** Header JSON larger than this is certainly not a real file (the reference caps at 100 MB). */
const MAX_HEADER = 100_000_000;

function numel(shape: number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Encode the file in memory; exported for callers that want the bytes (e.g. hashing). */
export function encodeSafetensors(tensors: Record<string, Tensor>, metadata?: Record<string, string>): Uint8Array {
  // The reference writer orders data by name too; a fixed order makes files byte-reproducible.
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new TypeError(`safetensors metadata ${k} must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const name of names) {
    if (name === '__metadata__') throw new TypeError('safetensors: "__metadata__" is not a tensor name');
    const t = tensors[name];
    if (!(t.dtype in BYTES)) throw new TypeError(`safetensors: unsupported dtype ${t.dtype} for ${name}`);
    if (!(t.data instanceof CTOR[t.dtype])) throw new TypeError(`safetensors: ${name} data does not match dtype ${t.dtype}`);
    for (const s of t.shape) {
      if (!Number.isInteger(s) || s < 0) throw new TypeError(`safetensors: ${name} has bad shape [${t.shape.join(', ')}]`);
    }
    if (numel(t.shape) !== t.data.length) {
      throw new TypeError(`safetensors: ${name} shape [${t.shape.join(', ')}] does not match ${t.data.length} elements`);
    }
    const bytes = t.data.length * BYTES[t.dtype];
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  // Pad with spaces so the data starts 8-byte aligned, which lets readers map it without copying.
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = new Uint8Array(8 + json.length + offset);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let pos = 8 + json.length;
  for (const name of names) {
    const d = tensors[name].data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    pos += d.byteLength;
  }
  return out;
}

export async function writeSafetensors(
  file: string,
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}

/** Parse and validate; `label` names the source in error messages. */
export function decodeSafetensors(buf: Uint8Array, label: string): SafetensorsFile {
  const bad = (why: string): never => {
    throw new UserError(`${label}: ${why}`);
  };
  if (buf.length < 8) bad(`truncated (${buf.length} bytes, too short for a safetensors header)`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const hlen64 = dv.getBigUint64(0, true);
  if (hlen64 > BigInt(MAX_HEADER)) bad(`not a safetensors file (header length ${hlen64})`);
  const hlen = Number(hlen64);
  if (8 + hlen > buf.length) bad(`truncated (header needs ${hlen} bytes, found ${buf.length - 8})`);
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 8, hlen).toString('utf8'));
  } catch {
    bad('malformed header (not valid JSON)');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) bad('malformed header (not a JSON object)');
  const h = header as Record<string, unknown>;
  const metadata: Record<string, string> = {};
  if (h.__metadata__ !== undefined) {
    const m = h.__metadata__;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) bad('malformed header (__metadata__ is not an object)');
    for (const [k, v] of Object.entries(m as Record<string, unknown>)) {
      if (typeof v !== 'string') bad(`malformed header (__metadata__.${k} is not a string)`);
      metadata[k] = v as string;
    }
  }
  const dataStart = 8 + hlen;
  const dataLen = buf.length - dataStart;
  const entries: { name: string; dtype: SafetensorsDtype; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(h)) {
    if (name === '__metadata__') continue;
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (typeof e !== 'object' || e === null) bad(`malformed header (entry ${name} is not an object)`);
    const dtype = e!.dtype;
    if (typeof dtype !== 'string' || !(dtype in BYTES)) bad(`tensor ${name}: unsupported dtype ${JSON.stringify(dtype)}`);
    const shape = e!.shape;
    if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) {
      bad(`tensor ${name}: malformed shape ${JSON.stringify(shape)}`);
    }
    const offs = e!.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[1] < offs[0]) {
      bad(`tensor ${name}: malformed data_offsets ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    const dt = dtype as SafetensorsDtype;
    const expect = numel(shape as number[]) * BYTES[dt];
    if (end - begin !== expect) {
      bad(`tensor ${name}: data_offsets span ${end - begin} bytes but shape [${(shape as number[]).join(', ')}] ${dt} needs ${expect}`);
    }
    entries.push({ name, dtype: dt, shape: shape as number[], begin, end });
  }
  // The reference requires the tensors to tile the data region exactly, with no gaps or overlaps.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const e of entries) {
    if (e.begin !== cursor) bad(`tensor ${e.name}: data_offsets [${e.begin}, ${e.end}] leave a gap or overlap`);
    cursor = e.end;
  }
  if (cursor > dataLen) bad(`truncated (expected ${cursor} bytes of tensor data, found ${dataLen})`);
  if (cursor < dataLen) bad(`${dataLen - cursor} trailing bytes after the tensor data`);
  const tensors: Record<string, Tensor> = {};
  for (const e of entries) {
    const bytes = e.end - e.begin;
    // Copy into a fresh buffer: the source offset need not be aligned for the element type, and
    // callers should not keep the whole file alive through a view.
    const copy = new Uint8Array(bytes);
    copy.set(buf.subarray(dataStart + e.begin, dataStart + e.end));
    const Ctor = CTOR[e.dtype];
    tensors[e.name] = { dtype: e.dtype, shape: e.shape, data: new Ctor(copy.buffer, 0, bytes / BYTES[e.dtype]) };
  }
  return { tensors, metadata };
}

export async function readSafetensors(file: string): Promise<SafetensorsFile> {
  let buf: Buffer;
  try {
    buf = await fs.readFile(file);
  } catch (err) {
    throw describeFsError(err, `reading ${file}`);
  }
  return decodeSafetensors(buf, file);
}
