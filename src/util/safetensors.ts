import { promises as fs } from 'node:fs';
import { writeFileAtomic, describeFsError } from './atomic.js';
import { UserError } from './errors.js';

/**
 * The safetensors container (as written by huggingface/safetensors): an 8-byte little-endian
 * header length, a JSON header mapping names to {dtype, shape, data_offsets} plus an optional
 * string-valued `__metadata__`, then the raw little-endian tensor bytes. SAELens loads
 * checkpoints in this format, so the layout must match the reference exactly.
 *
 * Two ways in, one header parser: readSafetensors decodes a whole (small) file into typed arrays
 * (SAE checkpoints, saved activations); openSafetensors parses only the header and reads tensor
 * bytes when asked (a GPT-2 XL checkpoint is 6 GB). Either way every entry is checked against
 * the file before any tensor is used.
 */

/** Every dtype the readers take, with its element size. */
export const ITEMSIZE = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 } as const;

export type SafetensorsDtype = keyof typeof ITEMSIZE;

/** The dtypes with a typed array: what the whole-file reader and the writer handle. */
const ARRAY = {
  F32: Float32Array,
  F64: Float64Array,
  I32: Int32Array,
  I64: BigInt64Array,
  U8: Uint8Array,
} as const;

export type ArrayDtype = keyof typeof ARRAY;

export type TensorData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

export interface Tensor {
  dtype: ArrayDtype;
  shape: number[];
  data: TensorData;
}

export interface SafetensorsFile {
  tensors: Record<string, Tensor>;
  metadata: Record<string, string>;
}

/**
 * A tensor as a checkpoint stores it, before any conversion: dtype, shape and little-endian
 * bytes. Both weight readers (safetensors, and torch's zip format for pytorch_model.bin) produce
 * these, and the model converts what it uses to float32.
 */
export interface RawTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** little-endian element bytes, row-major; length = numel × itemsize */
  bytes: Uint8Array;
}

export interface SafetensorsEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** absolute byte offset of the tensor in the file */
  start: number;
  length: number;
}

export interface OpenSafetensors {
  file: string;
  /** in header order */
  entries: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
  read(name: string): Promise<RawTensor>;
  close(): Promise<void>;
}

/** Header JSON larger than this is certainly not a real file (the reference caps at 100 MB). */
const MAX_HEADER = 100_000_000;

export function numel(shape: readonly number[]): number {
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
    if (!Object.hasOwn(ARRAY, t.dtype)) throw new TypeError(`safetensors: unsupported dtype ${t.dtype} for ${name}`);
    if (!(t.data instanceof ARRAY[t.dtype])) throw new TypeError(`safetensors: ${name} data does not match dtype ${t.dtype}`);
    for (const s of t.shape) {
      if (!Number.isInteger(s) || s < 0) throw new TypeError(`safetensors: ${name} has bad shape [${t.shape.join(', ')}]`);
    }
    if (numel(t.shape) !== t.data.length) {
      throw new TypeError(`safetensors: ${name} shape [${t.shape.join(', ')}] does not match ${t.data.length} elements`);
    }
    const bytes = t.data.length * ITEMSIZE[t.dtype];
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

function fail(label: string, why: string): never {
  throw new UserError(`${label}: ${why}`);
}

/** The header length the first 8 bytes give, checked against the file size. */
function headerLength(prefix: Uint8Array, size: number, label: string): number {
  if (size < 8) fail(label, `truncated (${size} bytes, too short for a safetensors header)`);
  const hlen = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (hlen > BigInt(MAX_HEADER)) fail(label, `not a safetensors file (header length ${hlen} is over the ${MAX_HEADER}-byte limit)`);
  const n = Number(hlen);
  if (8 + n > size) fail(label, `truncated (header length ${n} runs past the end of the file, ${size} bytes)`);
  return n;
}

/**
 * Parse and validate the header of a file of `size` bytes: every dtype known, every shape and
 * offset pair well formed, each span numel × itemsize, and the spans tiling the data section
 * exactly, with no gaps, overlaps or trailing bytes, as the reference requires.
 */
function parseHeader(json: Uint8Array, size: number, label: string): { entries: Map<string, SafetensorsEntry>; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(json.buffer, json.byteOffset, json.byteLength).toString('utf8'));
  } catch {
    fail(label, 'malformed header (not valid JSON)');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(label, 'malformed header (not a JSON object)');
  const h = header as Record<string, unknown>;
  const metadata: Record<string, string> = {};
  if (h.__metadata__ !== undefined) {
    const m = h.__metadata__;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) fail(label, 'malformed header (__metadata__ is not an object)');
    for (const [k, v] of Object.entries(m as Record<string, unknown>)) {
      if (typeof v !== 'string') fail(label, `malformed header (__metadata__.${k} is not a string)`);
      metadata[k] = v;
    }
  }
  const dataStart = 8 + json.byteLength;
  const dataLen = size - dataStart;
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, raw] of Object.entries(h)) {
    if (name === '__metadata__') continue;
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (typeof e !== 'object' || e === null) fail(label, `malformed header (entry ${name} is not an object)`);
    const { dtype, shape, data_offsets: offs } = e;
    if (typeof dtype !== 'string' || !Object.hasOwn(ITEMSIZE, dtype)) fail(label, `tensor ${name} has unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) fail(label, `tensor ${name} has a malformed shape ${JSON.stringify(shape)}`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[1] < offs[0]) {
      fail(label, `tensor ${name} has malformed data_offsets ${JSON.stringify(offs)}`);
    }
    const dt = dtype as SafetensorsDtype;
    const [begin, end] = offs as [number, number];
    const need = numel(shape) * ITEMSIZE[dt];
    if (end - begin !== need) {
      fail(label, `tensor ${name}: data_offsets span ${end - begin} bytes, so ${name} has ${end - begin} bytes for ${dt} ${JSON.stringify(shape)}, which needs ${need}`);
    }
    entries.set(name, { dtype: dt, shape, start: dataStart + begin, length: end - begin });
  }
  let cursor = dataStart;
  let last = '';
  for (const [name, e] of inFileOrder(entries)) {
    if (e.start !== cursor) fail(label, `tensor ${name}: data_offsets [${e.start - dataStart}, ${e.start - dataStart + e.length}] leave a gap or overlap`);
    cursor += e.length;
    last = name;
  }
  if (cursor > size) {
    fail(label, `truncated (expected ${cursor - dataStart} bytes of tensor data, found ${dataLen}): tensor ${last} lies beyond the end of the file, which is truncated or corrupt`);
  }
  if (cursor < size) fail(label, `${size - cursor} trailing bytes after the tensor data`);
  return { entries, metadata };
}

function inFileOrder(entries: Map<string, SafetensorsEntry>): [string, SafetensorsEntry][] {
  return [...entries].sort(([, a], [, b]) => a.start - b.start || a.length - b.length);
}

/** Parse and validate a whole file in memory; `label` names the source in error messages. */
export function decodeSafetensors(buf: Uint8Array, label: string): SafetensorsFile {
  const hlen = headerLength(buf, buf.length, label);
  const { entries, metadata } = parseHeader(buf.subarray(8, 8 + hlen), buf.length, label);
  const tensors: Record<string, Tensor> = {};
  for (const [name, e] of inFileOrder(entries)) {
    if (!Object.hasOwn(ARRAY, e.dtype)) fail(label, `tensor ${name}: unsupported dtype ${JSON.stringify(e.dtype)}`);
    const dtype = e.dtype as ArrayDtype;
    // Copy into a fresh buffer: the source offset need not be aligned for the element type, and
    // callers should not keep the whole file alive through a view.
    const copy = new Uint8Array(e.length);
    copy.set(buf.subarray(e.start, e.start + e.length));
    tensors[name] = { dtype, shape: e.shape, data: new ARRAY[dtype](copy.buffer, 0, e.length / ITEMSIZE[dtype]) };
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

/** Open a file for reading tensor by tensor: the header is parsed and checked now, tensor bytes read on demand. */
export async function openSafetensors(file: string): Promise<OpenSafetensors> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (err) {
    throw describeFsError(err, `reading ${file}`);
  }
  const readAt = async (dst: Uint8Array, position: number, what: string): Promise<void> => {
    for (let done = 0; done < dst.length; ) {
      const { bytesRead } = await fh.read(dst, done, dst.length - done, position + done);
      if (bytesRead === 0) fail(file, `truncated while reading ${what}`);
      done += bytesRead;
    }
  };
  try {
    const size = (await fh.stat()).size;
    const prefix = new Uint8Array(8);
    if (size >= 8) await readAt(prefix, 0, 'the header');
    const hlen = headerLength(prefix, size, file);
    const json = new Uint8Array(hlen);
    await readAt(json, 8, 'the header');
    const { entries, metadata } = parseHeader(json, size, file);
    return {
      file,
      entries,
      metadata,
      async read(name) {
        const e = entries.get(name);
        if (!e) fail(file, `no tensor ${name}`);
        const bytes = new Uint8Array(e.length);
        await readAt(bytes, e.start, name);
        return { dtype: e.dtype, shape: e.shape, bytes };
      },
      close: () => fh.close(),
    };
  } catch (err) {
    await fh.close();
    throw err;
  }
}
