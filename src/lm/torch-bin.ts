import * as path from 'node:path';
import { constants as bufferConstants } from 'node:buffer';
import { UserError } from '../util/errors.js';
import { ITEMSIZE, numel, type RawTensor, type WeightDtype } from './tensors.js';
import { ZipReader, type ZipEntry } from './zip.js';
import { unpickle, PyDict, type PyGlobal } from './pickle.js';

/**
 * pytorch_model.bin as torch.save writes it since torch 1.6: a zip holding `<top>/data.pkl` (a
 * pickle of the state dict whose tensors point at storages by key), `<top>/data/<key>` (each
 * storage's raw little-endian bytes) and `<top>/version`. Pythia's intermediate checkpoints exist
 * only in this form. The pickle is read by ./pickle.ts, which executes nothing: the whitelist below
 * is every global a plain state dict needs, each a TS function that only records numbers.
 */

const STORAGE_DTYPES: Record<string, WeightDtype> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  BoolStorage: 'BOOL',
  ByteStorage: 'U8',
};

interface StorageClass extends PyGlobal {
  readonly dtype: WeightDtype;
}

interface StorageRef {
  readonly kind: 'storage';
  readonly key: string;
  readonly dtype: WeightDtype;
  readonly numel: number;
}

interface TensorRef {
  readonly kind: 'tensor';
  readonly storage: StorageRef;
  readonly offset: number;
  readonly shape: number[];
  readonly stride: number[];
}

export async function readTorchBin(file: string): Promise<Record<string, RawTensor>> {
  const zip = await ZipReader.open(file);
  try {
    const prefix = archivePrefix(zip, file);
    const order = zip.entries.get(prefix + 'byteorder');
    if (order) {
      const text = new TextDecoder().decode(await zip.read(order)).trim();
      if (text !== 'little') throw new UserError(`${file}: storages are ${text}-endian; only little-endian checkpoints are read`);
    }
    const pkl = await zip.read(zip.entries.get(prefix + 'data.pkl')!);
    const refs = parseStateDict(pkl, file, prefix, zip);

    // Each storage is read once, however many tensors view it.
    const storages = new Map<string, Uint8Array>();
    const out: Record<string, RawTensor> = Object.create(null);
    for (const [name, t] of refs) {
      let bytes = storages.get(t.storage.key);
      if (!bytes) {
        bytes = await zip.read(zip.entries.get(`${prefix}data/${t.storage.key}`)!);
        storages.set(t.storage.key, bytes);
      }
      out[name] = { dtype: t.storage.dtype, shape: t.shape, bytes: materialise(t, bytes) };
    }
    return out;
  } finally {
    await zip.close();
  }
}

/** The archive's top folder ("archive/", or the saved file's stem), found by its data.pkl. */
function archivePrefix(zip: ZipReader, file: string): string {
  const tops = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (tops.length === 0) {
    throw new UserError(`${file}: a zip without <folder>/data.pkl is not a torch checkpoint (TorchScript and other archives are not read); use model.safetensors`);
  }
  if (tops.length > 1) throw new UserError(`${file}: several data.pkl in one archive (${tops.join(', ')})`);
  return tops[0].slice(0, -'data.pkl'.length);
}

function parseStateDict(pkl: Uint8Array, file: string, prefix: string, zip: ZipReader): Map<string, TensorRef> {
  const label = `${file} (${path.posix.basename(prefix)}/data.pkl)`;
  const bad = (why: string): never => {
    throw new UserError(`${label}: ${why}`);
  };
  const storages = new Map<string, StorageRef>();

  const globals = new Map<string, PyGlobal>();
  globals.set('collections.OrderedDict', {
    name: 'collections.OrderedDict',
    call: (args) => {
      // torch only ever pickles OrderedDict() empty (state dicts, backward hooks) and fills it by SETITEMS
      if (args.length !== 0) bad('OrderedDict called with arguments');
      return new PyDict();
    },
  });
  for (const [cls, dtype] of Object.entries(STORAGE_DTYPES)) {
    const g: StorageClass = { name: `torch.${cls}`, dtype };
    globals.set(g.name, g);
  }
  const rebuild = (fn: string, args: unknown[], nargs: number[]): TensorRef => {
    if (!nargs.includes(args.length)) bad(`${fn} with ${args.length} arguments`);
    const [storage, offset, size, stride] = args;
    if (!storage || (storage as StorageRef).kind !== 'storage') bad(`${fn} without a storage`);
    const s = storage as StorageRef;
    const shape = intList(size, `${fn} size`);
    const strides = intList(stride, `${fn} stride`);
    if (!isCount(offset)) bad(`${fn} with storage offset ${String(offset)}`);
    if (strides.length !== shape.length) bad(`${fn} with ${shape.length} sizes but ${strides.length} strides`);
    // backward hooks (args[5]) are always an empty OrderedDict in a saved state dict; anything
    // else would be code torch.load runs later
    if (args.length >= 6 && !(args[5] instanceof PyDict && args[5].items.size === 0)) bad(`${fn} with backward hooks`);
    const t: TensorRef = { kind: 'tensor', storage: s, offset: offset as number, shape, stride: strides };
    checkBounds(t, bad);
    return t;
  };
  globals.set('torch._utils._rebuild_tensor_v2', {
    name: 'torch._utils._rebuild_tensor_v2',
    // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    call: (args) => rebuild('_rebuild_tensor_v2', args, [6, 7]),
  });
  globals.set('torch._utils._rebuild_tensor', {
    name: 'torch._utils._rebuild_tensor',
    call: (args) => rebuild('_rebuild_tensor', args, [4]),
  });
  globals.set('torch._utils._rebuild_parameter', {
    name: 'torch._utils._rebuild_parameter',
    // (data, requires_grad, backward_hooks): an nn.Parameter is its data for our purposes
    call: (args) => {
      if (args.length !== 3 || !args[0] || (args[0] as TensorRef).kind !== 'tensor') bad('_rebuild_parameter without a tensor');
      return args[0];
    },
  });

  const persistentLoad = (pid: unknown): StorageRef => {
    // ('storage', StorageClass, key, location, numel)
    if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage') bad('persistent id is not a torch storage');
    const [, cls, key, , n] = pid as unknown[];
    const dtype = (cls as StorageClass | undefined)?.dtype;
    if (!dtype) bad(`persistent id with storage type ${describeGlobal(cls)}`);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_]+$/.test(key)) bad(`persistent id with storage key ${JSON.stringify(key)}`);
    if (!isCount(n)) bad(`storage ${key as string} with element count ${String(n)}`);
    const k = key as string;
    const prev = storages.get(k);
    if (prev) {
      if (prev.dtype !== dtype || prev.numel !== n) bad(`storage ${k} referenced as both ${prev.dtype}[${prev.numel}] and ${dtype}[${n}]`);
      return prev;
    }
    const entry: ZipEntry | undefined = zip.entries.get(`${prefix}data/${k}`);
    if (!entry) bad(`storage ${k} is referenced but the archive has no ${prefix}data/${k}`);
    const want = (n as number) * ITEMSIZE[dtype!];
    if (entry!.size !== want) bad(`storage ${k} holds ${entry!.size} bytes, ${dtype}[${n}] needs ${want}`);
    const ref: StorageRef = { kind: 'storage', key: k, dtype: dtype!, numel: n as number };
    storages.set(k, ref);
    return ref;
  };

  const root = unpickle(pkl, { label, globals, persistentLoad });
  if (!(root instanceof PyDict)) bad('the pickle is not a dict of tensors (a state_dict)');
  const out = new Map<string, TensorRef>();
  for (const [k, v] of (root as PyDict).items) {
    if (typeof k !== 'string') bad(`state dict key ${String(k)} is not a string`);
    if (!v || (v as TensorRef).kind !== 'tensor') bad(`state dict entry ${String(k)} is not a tensor`);
    out.set(k as string, v as TensorRef);
  }
  return out;

  function intList(v: unknown, what: string): number[] {
    if (!Array.isArray(v) || !v.every(isCount)) bad(`${what} is not a tuple of non-negative integers`);
    return (v as number[]).slice();
  }
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function describeGlobal(v: unknown): string {
  return v && typeof v === 'object' && typeof (v as PyGlobal).name === 'string' ? (v as PyGlobal).name : String(v);
}

/** Every element the view can touch must lie inside its storage. */
function checkBounds(t: TensorRef, bad: (why: string) => never): void {
  const n = numel(t.shape);
  if (n === 0) return;
  // stride-0 (expanded) views are legal, so a tiny storage can claim a huge tensor
  const bytes = n * ITEMSIZE[t.storage.dtype];
  if (!Number.isSafeInteger(bytes) || bytes > bufferConstants.MAX_LENGTH) bad(`tensor [${t.shape.join(', ')}] is too large to hold in memory`);
  let last = t.offset;
  for (let d = 0; d < t.shape.length; d++) last += (t.shape[d] - 1) * t.stride[d];
  if (last >= t.storage.numel) {
    bad(`tensor [${t.shape.join(', ')}] at offset ${t.offset} with strides [${t.stride.join(', ')}] reaches element ${last} of storage ${t.storage.key}, which has ${t.storage.numel}`);
  }
}

/** The view's elements in row-major order; a contiguous view is a slice of the storage, not a copy. */
function materialise(t: TensorRef, storage: Uint8Array): Uint8Array {
  const size = ITEMSIZE[t.storage.dtype];
  const n = numel(t.shape);
  if (n === 0) return new Uint8Array(0);
  let contiguous = true;
  let expect = 1;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    // a dimension of extent 1 never steps, so its stride does not matter
    if (t.shape[d] !== 1 && t.stride[d] !== expect) contiguous = false;
    expect *= t.shape[d];
  }
  if (contiguous) return storage.subarray(t.offset * size, (t.offset + n) * size);

  const out = new Uint8Array(n * size);
  const rank = t.shape.length;
  const inner = t.shape[rank - 1];
  const innerStride = t.stride[rank - 1] * size;
  const idx = new Array<number>(rank).fill(0);
  let o = 0;
  // walk the outer dimensions like an odometer and copy the innermost one element by element
  for (;;) {
    let src = t.offset;
    for (let d = 0; d < rank - 1; d++) src += idx[d] * t.stride[d];
    src *= size;
    if (innerStride === size) {
      // rows that are themselves contiguous (a slice of a bigger matrix) copy in one go
      out.set(storage.subarray(src, src + inner * size), o);
      o += inner * size;
    } else {
      for (let i = 0; i < inner; i++, src += innerStride) {
        for (let b = 0; b < size; b++) out[o++] = storage[src + b];
      }
    }
    let d = rank - 2;
    while (d >= 0 && ++idx[d] === t.shape[d]) idx[d--] = 0;
    if (d < 0) return out;
  }
}
