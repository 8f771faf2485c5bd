import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { readTorchBin } from '../src/lm/torch-bin.js';
import type { RawTensor, WeightDtype } from '../src/lm/tensors.js';
import { UserError } from '../src/util/errors.js';

const FIX = path.resolve(__dirname, '../fixtures');
const bin = (name: string) => path.join(FIX, 'torch-bin', name, 'pytorch_model.bin');

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-torchbin-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** An independent safetensors reader: the header names byte ranges of the data section. */
async function readSafetensorsRaw(file: string): Promise<Record<string, RawTensor>> {
  const buf = await fs.readFile(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: WeightDtype; shape: number[]; data_offsets: [number, number] }>;
  const out: Record<string, RawTensor> = {};
  for (const [k, h] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    out[k] = { dtype: h.dtype, shape: h.shape, bytes: new Uint8Array(buf.subarray(8 + n + h.data_offsets[0], 8 + n + h.data_offsets[1])) };
  }
  return out;
}

async function expectUserError(p: Promise<unknown>, re: RegExp): Promise<string> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  const msg = (err as Error).message;
  expect(msg).toMatch(re);
  expect(msg).not.toContain('\n');
  return msg;
}

const f32 = (t: RawTensor) => Array.from(new Float32Array(t.bytes.slice().buffer));

// ---- a hand-rolled torch archive, for the cases torch itself would never write ----

/** Pickle bytes, assembled opcode by opcode the way torch's pickler emits them. */
class Pk {
  readonly b: number[] = [];
  op(...x: number[]): this {
    this.b.push(...x);
    return this;
  }
  str(s: string): this {
    const u = Buffer.from(s, 'utf8');
    const n = Buffer.alloc(4);
    n.writeUInt32LE(u.length);
    return this.op(0x58, ...n, ...u);
  }
  int(v: number): this {
    const n = Buffer.alloc(4);
    n.writeInt32LE(v);
    return this.op(0x4a, ...n);
  }
  global(module: string, name: string): this {
    return this.op(0x63, ...Buffer.from(`${module}\n${name}\n`));
  }
  tuple(xs: number[]): this {
    this.op(0x28);
    for (const x of xs) this.int(x);
    return this.op(0x74);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.b);
  }
}

interface Spec {
  cls?: string;
  key: string;
  numel: number;
  offset?: number;
  size: number[];
  stride: number[];
}

function tensorOps(pk: Pk, t: Spec): Pk {
  pk.global('torch._utils', '_rebuild_tensor_v2').op(0x28);
  pk.op(0x28).str('storage').global('torch', t.cls ?? 'FloatStorage').str(t.key).str('cpu').int(t.numel).op(0x74, 0x51);
  pk.int(t.offset ?? 0).tuple(t.size).tuple(t.stride).op(0x89);
  return pk.global('collections', 'OrderedDict').op(0x29, 0x52, 0x74, 0x52);
}

/** OrderedDict(name → tensor) as torch pickles a state dict; `extra` is spliced in before STOP. */
function stateDictPkl(entries: Record<string, Spec>, extra: (pk: Pk) => void = () => {}): Uint8Array {
  const pk = new Pk().op(0x80, 2).global('collections', 'OrderedDict').op(0x29, 0x52, 0x28);
  for (const [name, t] of Object.entries(entries)) tensorOps(pk.str(name), t);
  pk.op(0x75);
  extra(pk);
  return pk.op(0x2e).bytes();
}

function floats(...v: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(v).buffer);
}

/** A zip of stored (or deflated) entries; zip64 moves every size and offset into zip64 records. */
function makeZip(files: [string, Uint8Array][], opts: { zip64?: boolean; method?: number } = {}): Buffer {
  const method = opts.method ?? 0;
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let off = 0;
  for (const [name, raw] of files) {
    const nameB = Buffer.from(name);
    const data = method === 8 ? zlib.deflateRawSync(raw) : Buffer.from(raw);
    const crc = zlib.crc32(raw);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(data.length, 18);
    lh.writeUInt32LE(raw.length, 22);
    lh.writeUInt16LE(nameB.length, 26);
    parts.push(lh, nameB, data);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt16LE(nameB.length, 28);
    let extra = Buffer.alloc(0);
    if (opts.zip64) {
      ch.writeUInt32LE(0xffffffff, 20);
      ch.writeUInt32LE(0xffffffff, 24);
      ch.writeUInt32LE(0xffffffff, 42);
      extra = Buffer.alloc(28);
      extra.writeUInt16LE(1, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(raw.length), 4);
      extra.writeBigUInt64LE(BigInt(data.length), 12);
      extra.writeBigUInt64LE(BigInt(off), 20);
    } else {
      ch.writeUInt32LE(data.length, 20);
      ch.writeUInt32LE(raw.length, 24);
      ch.writeUInt32LE(off, 42);
    }
    ch.writeUInt16LE(extra.length, 30);
    central.push(ch, nameB, extra);
    off += 30 + nameB.length + data.length;
  }
  const cd = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  const tail: Buffer[] = [];
  if (opts.zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeBigUInt64LE(BigInt(files.length), 24);
    rec.writeBigUInt64LE(BigInt(files.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(off), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(off + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    tail.push(rec, loc);
    eocd.writeUInt16LE(0xffff, 8);
    eocd.writeUInt16LE(0xffff, 10);
    eocd.writeUInt32LE(0xffffffff, 12);
    eocd.writeUInt32LE(0xffffffff, 16);
  } else {
    eocd.writeUInt16LE(files.length, 8);
    eocd.writeUInt16LE(files.length, 10);
    eocd.writeUInt32LE(cd.length, 12);
    eocd.writeUInt32LE(off, 16);
  }
  return Buffer.concat([...parts, cd, ...tail, eocd]);
}

const ONE_FLOAT: Record<string, Spec> = { w: { key: '0', numel: 3, size: [3], stride: [1] } };

async function writeArchive(
  name: string,
  pkl: Uint8Array,
  storages: Record<string, Uint8Array> = { '0': floats(1, 2, 3) },
  opts: { zip64?: boolean; method?: number; extra?: [string, Uint8Array][] } = {},
): Promise<string> {
  const files: [string, Uint8Array][] = [['archive/data.pkl', pkl]];
  for (const [k, v] of Object.entries(storages)) files.push([`archive/data/${k}`, v]);
  files.push(['archive/version', Buffer.from('3\n')], ...(opts.extra ?? []));
  const f = path.join(dir, `${name}.bin`);
  await fs.writeFile(f, makeZip(files, opts));
  return f;
}

// ---- the checkpoints torch wrote ----

describe('readTorchBin on torch.save output', () => {
  it('gpt2: names, dtypes and shapes are the safetensors ones plus the tied lm_head', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt2/model.safetensors'));
    const pt = await readTorchBin(bin('gpt2'));
    expect(Object.keys(pt).sort()).toEqual([...Object.keys(st), 'lm_head.weight'].sort());
    for (const [k, t] of Object.entries(st)) expect([k, pt[k].dtype, pt[k].shape]).toEqual([k, t.dtype, t.shape]);
    expect(pt['lm_head.weight'].shape).toEqual(st['wte.weight'].shape);
  });

  it('gpt2: every tensor equals the safetensors one bit for bit', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt2/model.safetensors'));
    const pt = await readTorchBin(bin('gpt2'));
    for (const [k, t] of Object.entries(st)) expect(Buffer.from(pt[k].bytes).equals(Buffer.from(t.bytes)), k).toBe(true);
    expect(Buffer.from(pt['lm_head.weight'].bytes).equals(Buffer.from(st['wte.weight'].bytes))).toBe(true);
  });

  it('gpt-neox F16: every weight equals the safetensors one bit for bit, same dtype and shape', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt-neox/model.safetensors'));
    const pt = await readTorchBin(bin('gpt-neox'));
    for (const [k, t] of Object.entries(st)) {
      expect([k, pt[k]?.dtype, pt[k]?.shape]).toEqual([k, 'F16', t.shape]);
      expect(Buffer.from(pt[k].bytes).equals(Buffer.from(t.bytes)), k).toBe(true);
    }
  });

  it('gpt-neox: the only extra names are the Pythia buffers', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt-neox/model.safetensors'));
    const pt = await readTorchBin(bin('gpt-neox'));
    const extra = Object.keys(pt).filter((k) => !(k in st)).sort();
    const want = [0, 1, 2].flatMap((l) => ['bias', 'masked_bias', 'rotary_emb.inv_freq'].map((b) => `gpt_neox.layers.${l}.attention.${b}`)).sort();
    expect(extra).toEqual(want);
  });

  it('gpt-neox BF16: every weight is the F16 value rounded to nearest-even bfloat16', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt-neox/model.safetensors'));
    const pt = await readTorchBin(bin('gpt-neox-bf16'));
    const f32bits = new Uint32Array(1);
    const asF32 = new Float32Array(f32bits.buffer);
    for (const [k, t] of Object.entries(st)) {
      expect([k, pt[k].dtype, pt[k].shape]).toEqual([k, 'BF16', t.shape]);
      const half = new Uint16Array(t.bytes.slice().buffer);
      const got = new Uint16Array(pt[k].bytes.slice().buffer);
      const want = new Uint16Array(half.length);
      for (let i = 0; i < half.length; i++) {
        asF32[0] = halfToNumber(half[i]);
        const u = f32bits[0];
        want[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
      }
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), k).toBe(true);
    }
  });

  it('gpt-neox: the causal-mask buffer is BOOL [1, 1, 64, 64], lower-triangular 0/1 bytes', async () => {
    const pt = await readTorchBin(bin('gpt-neox'));
    const m = pt['gpt_neox.layers.1.attention.bias'];
    expect([m.dtype, m.shape]).toEqual(['BOOL', [1, 1, 64, 64]]);
    const want = new Uint8Array(64 * 64);
    for (let i = 0; i < 64; i++) for (let j = 0; j <= i; j++) want[i * 64 + j] = 1;
    expect(Buffer.from(m.bytes).equals(Buffer.from(want))).toBe(true);
  });

  it('gpt-neox: masked_bias is an F32 scalar of -1e9 and inv_freq is F32 [1, 0.01]', async () => {
    const pt = await readTorchBin(bin('gpt-neox-bf16'));
    const mb = pt['gpt_neox.layers.2.attention.masked_bias'];
    expect([mb.dtype, mb.shape, f32(mb)]).toEqual(['F32', [], [Math.fround(-1e9)]]);
    const inv = pt['gpt_neox.layers.0.attention.rotary_emb.inv_freq'];
    expect([inv.dtype, inv.shape, f32(inv)]).toEqual(['F32', [2], [1, Math.fround(0.01)]]);
  });

  it('tensors sharing one storage at different offsets each get their own values', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt-neox/model.safetensors'));
    const pt = await readTorchBin(bin('gpt-neox'));
    const p = 'gpt_neox.layers.0.';
    for (const k of ['input_layernorm.weight', 'input_layernorm.bias', 'post_attention_layernorm.weight', 'post_attention_layernorm.bias']) {
      expect(Buffer.from(pt[p + k].bytes).equals(Buffer.from(st[p + k].bytes)), k).toBe(true);
    }
    // distinct values, so a reader ignoring the offset cannot pass
    expect(Buffer.from(pt[p + 'input_layernorm.bias'].bytes).equals(Buffer.from(pt[p + 'input_layernorm.weight'].bytes))).toBe(false);
  });

  it('non-contiguous views (transposed, every other row) come back row-major', async () => {
    const st = await readSafetensorsRaw(path.join(FIX, 'hf-tiny/gpt-neox/model.safetensors'));
    const pt = await readTorchBin(bin('gpt-neox'));
    for (const k of ['gpt_neox.layers.1.attention.query_key_value.weight', 'gpt_neox.layers.2.mlp.dense_4h_to_h.weight']) {
      expect(pt[k].bytes.length).toBe(st[k].bytes.length);
      expect(Buffer.from(pt[k].bytes).equals(Buffer.from(st[k].bytes)), k).toBe(true);
    }
  });

  it('refuses the malicious checkpoint naming posix.system, and runs nothing', async () => {
    const marker = '/tmp/sae-torch-bin-pwned';
    await fs.rm(marker, { force: true });
    const msg = await expectUserError(readTorchBin(bin('malicious')), /posix\.system/);
    expect(msg).toContain(bin('malicious'));
    expect(msg).toContain('safetensors');
    expect(existsSync(marker)).toBe(false);
  });
});

// ---- crafted archives ----

describe('readTorchBin on crafted archives', () => {
  it('reads a hand-made archive, proving the helpers build what torch builds', async () => {
    const f = await writeArchive('ok', stateDictPkl(ONE_FLOAT));
    const t = await readTorchBin(f);
    expect([t.w.dtype, t.w.shape, f32(t.w)]).toEqual(['F32', [3], [1, 2, 3]]);
  });

  it('materialises a transposed view with an offset', async () => {
    // storage 0..9; view = rows of length 2 read down columns of a [3, 2] matrix from element 4
    const pkl = stateDictPkl({ w: { key: '0', numel: 10, offset: 4, size: [2, 3], stride: [1, 2] } });
    const f = await writeArchive('strided', pkl, { '0': floats(0, 1, 2, 3, 4, 5, 6, 7, 8, 9) });
    const t = await readTorchBin(f);
    expect([t.w.shape, f32(t.w)]).toEqual([[2, 3], [4, 6, 8, 5, 7, 9]]);
  });

  it('materialises a stride-0 (expanded) view by repeating it', async () => {
    const pkl = stateDictPkl({ w: { key: '0', numel: 3, size: [2, 3], stride: [0, 1] } });
    const t = await readTorchBin(await writeArchive('expand', pkl));
    expect([t.w.shape, f32(t.w)]).toEqual([[2, 3], [1, 2, 3, 1, 2, 3]]);
  });

  it('refuses an expanded view too large to hold in memory', async () => {
    const pkl = stateDictPkl({ w: { key: '0', numel: 3, size: [2 ** 30, 2 ** 30], stride: [0, 0] } });
    await expectUserError(readTorchBin(await writeArchive('huge', pkl)), /tensor \[1073741824, 1073741824\] is too large/);
  });

  it('reads a zip64 archive', async () => {
    const f = await writeArchive('zip64', stateDictPkl(ONE_FLOAT), undefined, { zip64: true });
    expect(f32((await readTorchBin(f)).w)).toEqual([1, 2, 3]);
  });

  it('refuses a truncated file', async () => {
    const whole = await fs.readFile(bin('gpt2'));
    const f = path.join(dir, 'truncated.bin');
    await fs.writeFile(f, whole.subarray(0, whole.length - 1000));
    await expectUserError(readTorchBin(f), /truncated\.bin: not a torch zip checkpoint .*truncated/);
  });

  it('refuses a corrupt central directory', async () => {
    const buf = Buffer.from(await fs.readFile(bin('gpt-neox')));
    const eocd = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
    const cd = buf.readUInt32LE(eocd + 16);
    // damage the second entry's signature
    const second = buf.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]), cd + 4);
    buf[second] ^= 0xff;
    const f = path.join(dir, 'badcd.bin');
    await fs.writeFile(f, buf);
    await expectUserError(readTorchBin(f), /corrupt zip central directory \(bad signature for entry 1/);
  });

  it('refuses a storage whose bytes fail the CRC check', async () => {
    const buf = Buffer.from(await fs.readFile(bin('gpt-neox')));
    const at = buf.indexOf(Buffer.from('archive/data/0'));
    buf[at + 200] ^= 0x01; // inside the first storage's data (it is 106496 bytes long)
    const f = path.join(dir, 'crc.bin');
    await fs.writeFile(f, buf);
    await expectUserError(readTorchBin(f), /archive\/data\/0 fails its CRC-32 check/);
  });

  it('refuses an unknown opcode, naming it', async () => {
    // INST: the protocol-0 way to build an object by calling its class
    const pkl = stateDictPkl(ONE_FLOAT, (pk) => pk.op(0x69, ...Buffer.from('os\nsystem\n')));
    const f = await writeArchive('inst', pkl);
    await expectUserError(readTorchBin(f), /inst\.bin \(archive\/data\.pkl\): refusing pickle opcode INST \(0x69\)/);
  });

  it('refuses a byte that is no pickle opcode at all', async () => {
    const f = await writeArchive('ff', stateDictPkl(ONE_FLOAT, (pk) => pk.op(0xff)));
    await expectUserError(readTorchBin(f), /refusing pickle opcode unknown \(0xff\)/);
  });

  it('refuses builtins.eval reached through STACK_GLOBAL', async () => {
    const pkl = stateDictPkl(ONE_FLOAT, (pk) => pk.op(0x8c, 8, ...Buffer.from('builtins'), 0x8c, 4, ...Buffer.from('eval'), 0x93));
    await expectUserError(readTorchBin(await writeArchive('eval', pkl)), /refusing to load global builtins\.eval/);
  });

  it('refuses REDUCE on a whitelisted name that is not a function (a storage class)', async () => {
    const pkl = stateDictPkl(ONE_FLOAT, (pk) => pk.global('torch', 'FloatStorage').op(0x29, 0x52));
    await expectUserError(readTorchBin(await writeArchive('reduce', pkl)), /refusing REDUCE .*torch\.FloatStorage/);
  });

  it('refuses a persistent id naming a storage the archive lacks', async () => {
    const pkl = stateDictPkl({ w: { key: '7', numel: 3, size: [3], stride: [1] } });
    await expectUserError(readTorchBin(await writeArchive('missing', pkl)), /storage 7 is referenced but the archive has no archive\/data\/7/);
  });

  it('refuses a storage whose size does not match its element count', async () => {
    const pkl = stateDictPkl({ w: { key: '0', numel: 4, size: [3], stride: [1] } });
    await expectUserError(readTorchBin(await writeArchive('size', pkl)), /storage 0 holds 12 bytes, F32\[4\] needs 16/);
  });

  it('refuses a view that reaches past its storage', async () => {
    const pkl = stateDictPkl({ w: { key: '0', numel: 3, offset: 1, size: [3], stride: [1] } });
    await expectUserError(readTorchBin(await writeArchive('oob', pkl)), /reaches element 3 of storage 0, which has 3/);
  });

  it('refuses compressed entries', async () => {
    const f = await writeArchive('deflate', stateDictPkl(ONE_FLOAT), undefined, { method: 8 });
    await expectUserError(readTorchBin(f), /data\.pkl is compressed \(method 8\)/);
  });

  it('refuses big-endian storages', async () => {
    const f = await writeArchive('be', stateDictPkl(ONE_FLOAT), undefined, { extra: [['archive/byteorder', Buffer.from('big')]] });
    await expectUserError(readTorchBin(f), /big-endian/);
  });

  it('refuses a bare pickle (torch.save before 1.6), naming safetensors', async () => {
    const f = path.join(dir, 'legacy.bin');
    await fs.writeFile(f, Buffer.concat([Buffer.from([0x80, 0x02, 0x8a, 0x0a]), Buffer.alloc(40)]));
    await expectUserError(readTorchBin(f), /legacy\.bin: not a torch zip checkpoint \(a bare pickle.*model\.safetensors/);
  });

  it('reports a missing file in one line', async () => {
    await expectUserError(readTorchBin(path.join(dir, 'nope.bin')), /nope\.bin: no such file or directory/);
  });

  it('refuses a zip without data.pkl', async () => {
    const f = path.join(dir, 'other.bin');
    await fs.writeFile(f, makeZip([['a/b.txt', Buffer.from('hi')]]));
    await expectUserError(readTorchBin(f), /without <folder>\/data\.pkl is not a torch checkpoint/);
  });
});

function halfToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
