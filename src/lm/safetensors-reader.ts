import { promises as fs } from 'node:fs';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import { ITEMSIZE, numel, type RawTensor, type WeightDtype } from './tensors.js';

/**
 * A safetensors file opened for reading tensor by tensor (a GPT-2 XL checkpoint is 6 GB: the
 * header is parsed and checked up front, tensor bytes are read only when asked for). Every entry
 * is validated against the file before anything is read: dtype known, offsets inside the data
 * section, length = numel × itemsize, no overlaps.
 */
export interface SafetensorsEntry {
  dtype: WeightDtype;
  shape: number[];
  /** absolute byte offset of the tensor in the file */
  start: number;
  length: number;
}

export interface OpenSafetensors {
  file: string;
  entries: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
  read(name: string): Promise<RawTensor>;
  close(): Promise<void>;
}

const MAX_HEADER = 100_000_000;

export async function openSafetensors(file: string): Promise<OpenSafetensors> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (err) {
    throw describeFsError(err, file);
  }
  try {
    const size = (await fh.stat()).size;
    if (size < 8) throw new UserError(`${file}: truncated safetensors file (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen > MAX_HEADER || 8 + headerLen > size) throw new UserError(`${file}: safetensors header length ${headerLen} runs past the end of the file (${size} bytes)`);
    const hdr = Buffer.alloc(headerLen);
    await fh.read(hdr, 0, headerLen, 8);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(hdr.toString('utf8')) as Record<string, unknown>;
    } catch {
      throw new UserError(`${file}: safetensors header is not valid JSON`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new UserError(`${file}: safetensors header is not an object`);
    const dataStart = 8 + headerLen;
    const dataLen = size - dataStart;
    const entries = new Map<string, SafetensorsEntry>();
    let metadata: Record<string, string> = {};
    const spans: Array<[number, number, string]> = [];
    for (const [name, v] of Object.entries(json)) {
      if (name === '__metadata__') {
        metadata = (v ?? {}) as Record<string, string>;
        continue;
      }
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e?.dtype !== 'string' || !Object.hasOwn(ITEMSIZE, e.dtype)) throw new UserError(`${file}: tensor ${name} has unknown dtype ${JSON.stringify(e?.dtype)}`);
      const dtype = e.dtype as WeightDtype;
      if (!Array.isArray(e.shape) || !e.shape.every((s) => Number.isSafeInteger(s) && s >= 0)) throw new UserError(`${file}: tensor ${name} has a malformed shape`);
      const off = e.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[1] < off[0]) {
        throw new UserError(`${file}: tensor ${name} has malformed data_offsets`);
      }
      const shape = e.shape as number[];
      const [a, b] = off as [number, number];
      if (b > dataLen) throw new UserError(`${file}: tensor ${name} lies beyond the end of the file (offset ${b}, data ${dataLen} bytes): truncated or corrupt`);
      if (b - a !== numel(shape) * ITEMSIZE[dtype]) throw new UserError(`${file}: tensor ${name} has ${b - a} bytes for ${dtype} ${JSON.stringify(shape)}`);
      entries.set(name, { dtype, shape, start: dataStart + a, length: b - a });
      spans.push([a, b, name]);
    }
    spans.sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < spans.length; i++) {
      if (spans[i][0] < spans[i - 1][1]) throw new UserError(`${file}: tensors ${spans[i - 1][2]} and ${spans[i][2]} overlap`);
    }
    return {
      file,
      entries,
      metadata,
      async read(name) {
        const e = entries.get(name);
        if (!e) throw new UserError(`${file}: no tensor ${name}`);
        const bytes = new Uint8Array(e.length);
        let done = 0;
        while (done < e.length) {
          const { bytesRead } = await fh.read(bytes, done, e.length - done, e.start + done);
          if (bytesRead === 0) throw new UserError(`${file}: truncated while reading ${name}`);
          done += bytesRead;
        }
        return { dtype: e.dtype, shape: e.shape, bytes };
      },
      close: () => fh.close(),
    };
  } catch (err) {
    await fh.close();
    throw err;
  }
}
