import { promises as fs } from 'node:fs';
import * as zlib from 'node:zlib';

/**
 * torch.save's zip checkpoint, written without Python: `<top>/data.pkl` (a protocol-2 pickle, opcode
 * for opcode what CPython's Pickler emits for a state dict, memo included), `<top>/byteorder`,
 * `<top>/data/<key>` (each storage's bytes, 64-byte aligned by padding the local header's extra field
 * as torch's writer does), `<top>/version` and `<top>/.data/serialization_id`.
 */

export type TorchDtype = 'F32' | 'F64' | 'F16' | 'BF16' | 'I32' | 'I64';
export interface TorchTensor {
  dtype: TorchDtype;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint16Array;
}

const STORAGE: Record<TorchDtype, string> = {
  F32: 'FloatStorage',
  F64: 'DoubleStorage',
  F16: 'HalfStorage',
  BF16: 'BFloat16Storage',
  I32: 'IntStorage',
  I64: 'LongStorage',
};

/** Pickle opcodes as CPython's protocol-2 Pickler writes them; strings and globals are memoised and reused. */
export class Pickler {
  readonly b: number[] = [];
  private memo = new Map<string, number>();
  op(...x: number[]): this {
    for (const v of x) this.b.push(v);
    return this;
  }
  put(key?: string): this {
    const i = this.memo.size;
    if (key !== undefined) this.memo.set(key, i);
    else this.memo.set(`\0anon${i}`, i);
    return i < 256 ? this.op(0x71, i) : this.op(0x72, ...le32(i));
  }
  private reuse(key: string): boolean {
    const i = this.memo.get(key);
    if (i === undefined) return false;
    if (i < 256) this.op(0x68, i);
    else this.op(0x6a, ...le32(i));
    return true;
  }
  str(s: string): this {
    if (this.reuse(`s:${s}`)) return this;
    const u = Buffer.from(s, 'utf8');
    return this.op(0x58, ...le32(u.length), ...u).put(`s:${s}`);
  }
  int(v: number): this {
    if (v >= 0 && v < 256) return this.op(0x4b, v);
    if (v >= 0 && v < 65536) return this.op(0x4d, v & 0xff, v >> 8);
    return this.op(0x4a, ...le32(v));
  }
  global(module: string, name: string): this {
    if (this.reuse(`g:${module}.${name}`)) return this;
    return this.op(0x63, ...Buffer.from(`${module}\n${name}\n`)).put(`g:${module}.${name}`);
  }
  /** a tuple of ints: EMPTY_TUPLE, TUPLE1..3, or MARK … TUPLE, memoised like CPython's */
  intTuple(xs: number[]): this {
    if (xs.length === 0) return this.op(0x29);
    if (xs.length > 3) this.op(0x28);
    for (const x of xs) this.int(x);
    return this.op(xs.length <= 3 ? 0x84 + xs.length : 0x74).put();
  }
  /** Anything reduce-built: pushes the rest, then REDUCE and a memo slot */
  reduce(): this {
    return this.op(0x52).put();
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.b);
  }
}

function le32(v: number): number[] {
  const n = Buffer.alloc(4);
  n.writeInt32LE(v);
  return [...n];
}

export interface StateDictOptions {
  /** 'dict': `{k: v.cpu() for …}` as dictionary_learning's trainSAE saves; 'OrderedDict': `ae.state_dict()` itself, with its _metadata */
  root?: 'dict' | 'OrderedDict';
  /** more key/value ops inside the SETITEMS mark, after the tensors (for hostile pickles) */
  extraItems?: (pk: Pickler) => void;
}

/** The pickle of a state dict and the storages it points at (one per tensor, keys '0', '1', …). */
export function stateDictPickle(entries: Record<string, TorchTensor>, opts: StateDictOptions = {}): { pkl: Uint8Array; storages: Uint8Array[] } {
  const pk = new Pickler().op(0x80, 2);
  const ordered = opts.root === 'OrderedDict';
  if (ordered) pk.global('collections', 'OrderedDict').op(0x29).reduce();
  else pk.op(0x7d).put();
  pk.op(0x28);
  const storages: Uint8Array[] = [];
  for (const [name, t] of Object.entries(entries)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== n) throw new Error(`${name}: ${t.data.length} values for shape [${t.shape}]`);
    const key = String(storages.length);
    storages.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice());
    pk.str(name).global('torch._utils', '_rebuild_tensor_v2');
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    pk.op(0x28);
    pk.op(0x28).str('storage').global('torch', STORAGE[t.dtype]).str(key).str('cpu').int(n).op(0x74).put().op(0x51);
    const stride = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    pk.int(0).intTuple(t.shape).intTuple(stride).op(0x89);
    pk.global('collections', 'OrderedDict').op(0x29).reduce();
    pk.op(0x74).put().reduce();
  }
  opts.extraItems?.(pk);
  pk.op(0x75);
  if (ordered) {
    // OrderedDict.__reduce__'s state: vars(state_dict) = {'_metadata': OrderedDict('' → {'version': 1}, …)}
    pk.op(0x7d).put().str('_metadata').global('collections', 'OrderedDict').op(0x29).reduce();
    pk.op(0x28).str('').op(0x7d).put().str('version').int(1).op(0x73).op(0x75);
    pk.op(0x73).op(0x62);
  }
  return { pkl: pk.op(0x2e).bytes(), storages };
}

/** The zip torch.save writes around a pickle and its storages (stored entries, CRC-32, no compression). */
export function torchZip(pkl: Uint8Array, storages: Uint8Array[], top = 'archive'): Buffer {
  const files: [string, Uint8Array][] = [
    [`${top}/data.pkl`, pkl],
    [`${top}/byteorder`, Buffer.from('little')],
    ...storages.map((s, i): [string, Uint8Array] => [`${top}/data/${i}`, s]),
    [`${top}/version`, Buffer.from('3\n')],
    [`${top}/.data/serialization_id`, Buffer.from('1234567890123456789012345678901234567890')],
  ];
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let off = 0;
  for (const [name, raw] of files) {
    const nameB = Buffer.from(name);
    const crc = zlib.crc32(raw);
    // torch pads the local extra field ('FB' + length) so each record's data starts on a 64-byte boundary
    const pad = (64 - ((off + 30 + nameB.length + 4) % 64)) % 64;
    const extra = Buffer.alloc(4 + pad);
    extra.writeUInt16LE(0x4246, 0);
    extra.writeUInt16LE(pad, 2);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(raw.length, 18);
    lh.writeUInt32LE(raw.length, 22);
    lh.writeUInt16LE(nameB.length, 26);
    lh.writeUInt16LE(extra.length, 28);
    parts.push(lh, nameB, extra, Buffer.from(raw));
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(raw.length, 20);
    ch.writeUInt32LE(raw.length, 24);
    ch.writeUInt16LE(nameB.length, 28);
    ch.writeUInt32LE(off, 42);
    central.push(ch, nameB);
    off += 30 + nameB.length + extra.length + raw.length;
  }
  const cd = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(files.length, 8);
  eocd.writeUInt16LE(files.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(off, 16);
  return Buffer.concat([...parts, cd, eocd]);
}

/** torch.save(state_dict, file) for the given tensors. */
export async function writeTorchSave(file: string, entries: Record<string, TorchTensor>, opts: StateDictOptions & { top?: string } = {}): Promise<void> {
  const { pkl, storages } = stateDictPickle(entries, opts);
  await fs.writeFile(file, torchZip(pkl, storages, opts.top));
}
